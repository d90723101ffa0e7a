#!/usr/bin/env bash
# Print the Debian archive mirror APT is configured with: the first enabled `deb` source whose URI
# ends in /debian, in the order APT reads them (sources.list, then sources.list.d/ by name). Both
# source formats are read: one-line entries (sources.list, *.list: `deb [opts] URI suite comps`)
# and deb822 stanzas (*.sources: `Types:`, `URIs:`, `Enabled:`), which is all a current Debian
# installs. Files with other endings (e.g. *.disabled) are ignored, as APT ignores them.
#
#   scripts/debian-mirror.sh [APT_DIR]        (default /etc/apt)
#
# Exit 1 with a message on stderr when no Debian archive is configured (e.g. an Ubuntu host).
set -euo pipefail

dir="${1:-/etc/apt}"
files=()
[ -f "$dir/sources.list" ] && files+=("$dir/sources.list")
for f in "$dir"/sources.list.d/*; do # a glob expands sorted by name
  case "$f" in *.list | *.sources) [ -f "$f" ] && files+=("$f") ;; esac
done
if [ ${#files[@]} -eq 0 ]; then
  echo "debian-mirror: no APT sources in $dir (sources.list, sources.list.d/*.list|*.sources)" >&2
  exit 1
fi

# mawk and gawk alike: no gawk-only functions
if ! awk '
function debian(u) { return u ~ /^https?:\/\/[^ ]+\/debian\/?$/ }
function found_it(u) { print u; found = 1; exit }
# a deb822 stanza ends at a blank line or the end of its file
function flush(   n, i, u) {
  if (deb822 && enabled && types ~ /(^|[ \t])deb([ \t]|$)/) {
    n = split(uris, u, /[ \t]+/)
    for (i = 1; i <= n; i++) if (debian(u[i])) found_it(u[i])
  }
  types = ""; uris = ""; enabled = 1; field = ""
}
FNR == 1 { flush(); deb822 = FILENAME ~ /\.sources$/ }
/^[ \t]*#/ { next }
deb822 && /^[ \t]*$/ { flush(); next }
deb822 && /^[A-Za-z][A-Za-z0-9-]*:/ {
  field = tolower(substr($0, 1, index($0, ":") - 1))
  value = substr($0, index($0, ":") + 1)
  if (field == "types") types = value
  else if (field == "uris") uris = value
  else if (field == "enabled") enabled = (value !~ /^[ \t]*(no|false|0)[ \t]*$/)
  next
}
deb822 && /^[ \t]/ { if (field == "uris") uris = uris " " $0; next }  # a continuation line
!deb822 {
  sub(/\[[^]]*\]/, "")  # [arch=amd64 signed-by=...] options; fields are split again
  if ($1 == "deb" && debian($2)) found_it($2)
}
END { if (!found) flush(); exit found ? 0 : 1 }
' "${files[@]}"; then
  echo "debian-mirror: no enabled 'deb' source ending in /debian in ${files[*]}" >&2
  exit 1
fi
