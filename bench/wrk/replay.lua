-- Replays pre-built HTTP requests round-robin. Each wrk thread reads its own file
-- (<prefix>.<thread index>), so per-thread request sets (e.g. sessions) never overlap.
-- Record format (written by bench/loadgen.py):
--   <method>\n<path>\n<n headers>\n<name>\n<value>\n...<body length>\n<body bytes>\n
-- done() prints one JSON line with latency percentiles in microseconds.
local threads = {}
local counter = 0

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

local reqs = {}

function init(args)
  local f = assert(io.open(args[1] .. "." .. tid, "rb"))
  while true do
    local method = f:read("*l")
    if method == nil or method == "" then break end
    local path = f:read("*l")
    local n = tonumber(f:read("*l"))
    local headers = {}
    for _ = 1, n do
      local k = f:read("*l")
      headers[k] = f:read("*l")
    end
    local len = tonumber(f:read("*l"))
    local body = nil
    if len > 0 then body = f:read(len) end
    f:read("*l")
    reqs[#reqs + 1] = wrk.format(method, path, headers, body)
  end
  f:close()
  counter = 0
end

function request()
  counter = counter % #reqs + 1
  return reqs[counter]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d,' ..
    '"p50":%d,"p90":%d,"p99":%d,"p999":%d,"mean":%.1f,"max":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.mean, latency.max))
end
