"""scripts/system-deps.sh (the first step of `make test`) installs what the tests drive and leaves
the machine's services alone: it never stops or starts one, and packages it installs may not
start their daemons. apt-get and the service tools are fakes at the PATH seam that record calls."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.cluster import ROOT

SCRIPT = ROOT / "scripts" / "system-deps.sh"
POLICY = Path("/usr/sbin/policy-rc.d")
TOOLS = ("redis-server", "nginx", "chromium", "wrk", "podman", "buildah", "debootstrap", "runc")

FAKE_APT = """#!/bin/bash
# what the install would see: the arguments, and whether a daemon start would be allowed
if [ "$1" = install ]; then
  echo "install $*" >>"{calls}"
  /usr/sbin/policy-rc.d redis-server start >/dev/null 2>&1
  echo "policy $?" >>"{calls}"
fi
"""
FAKE_SERVICE = '#!/bin/sh\necho "$(basename "$0") $*" >>"{calls}"\n'


@pytest.mark.skipif(os.geteuid() != 0, reason="the install path runs as root only")
def test_installs_the_test_tools_and_touches_no_service(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "apt-get").write_text(FAKE_APT.format(calls=calls))
    for name in ("service", "systemctl", "invoke-rc.d"):
        (fake / name).write_text(FAKE_SERVICE.format(calls=calls))
    for tool in fake.iterdir():
        tool.chmod(0o755)
    # only what the script itself uses, so the tools it looks for count as missing
    for name in ("id", "mktemp", "rm", "chmod", "cat", "basename"):
        found = shutil.which(name)
        assert found is not None, name
        (fake / name).symlink_to(found)
    policy_before = POLICY.read_bytes() if POLICY.exists() else None

    r = subprocess.run(
        ["/bin/bash", str(SCRIPT)],
        env={"PATH": str(fake), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert r.returncode == 0, r.stderr
    lines = calls.read_text().splitlines()
    install = next(x for x in lines if x.startswith("install ")).split()
    # all but those found in /usr/sbin, which the script also looks in (nginx, debootstrap, ...)
    missing = {t for t in TOOLS if not os.access(f"/usr/sbin/{t}", os.X_OK)}
    assert {"wrk", "podman"} <= missing and missing <= set(install), install
    assert "policy 101" in lines  # a daemon start during the install is refused
    assert [x for x in lines if not x.startswith(("install ", "policy "))] == []  # no service calls
    assert r.stderr.strip().startswith("system-deps: installing ")  # one line, no apt chatter
    # a policy the machine had is untouched; one the script wrote for itself is gone
    assert (POLICY.read_bytes() if POLICY.exists() else None) == policy_before
