-- wrk script: POST pre-encoded remote-write bodies round-robin over keep-alive connections.
--
--   wrk -t2 -c16 -d20s --latency -s remote_write.lua http://HOST:PORT/api/v1/write -- DIR COUNT
--
-- DIR holds rw-00000.bin ... (bench/pipeline/workload.py); every thread reads all COUNT bodies
-- in init() and formats each request once, so nothing is encoded while timing. Each thread
-- starts at a different offset. WRK_DELAY_MS=N (environment) makes every connection wait N ms
-- between requests: a paced load for the latency mode. At the end one line
-- "WRK_JSON {...}" gives requests, non-2xx/3xx answers (errors.status), errors and latency
-- percentiles (microseconds) for run.py.

local threads = {}
local requests = {}
local position = 1

local delay_ms = tonumber(os.getenv("WRK_DELAY_MS") or "0")
if delay_ms > 0 then
  -- wrk looks for delay() right after loading the script, so it is defined here, not in init.
  function delay()
    return delay_ms
  end
end

function setup(thread)
  table.insert(threads, thread)
  thread:set("id", #threads)
end

function init(args)
  local dir, count = args[1], tonumber(args[2])
  assert(dir and count, "usage: wrk ... -s remote_write.lua URL -- DIR COUNT")
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/x-protobuf"
  wrk.headers["Content-Encoding"] = "snappy"
  wrk.headers["X-Prometheus-Remote-Write-Version"] = "0.1.0"
  for i = 0, count - 1 do
    local file = assert(io.open(string.format("%s/rw-%05d.bin", dir, i), "rb"))
    local body = file:read("*a")
    file:close()
    requests[#requests + 1] = wrk.format(nil, nil, nil, body)
  end
  position = ((id or 1) - 1) * 37 % #requests + 1
end

function request()
  local r = requests[position]
  position = position % #requests + 1
  return r
end

function done(summary, latency, _)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9)))
end
