-- wrk script: POST pre-encoded remote-write bodies round-robin over keep-alive connections.
--
--   wrk -t2 -c16 -d20s --latency -s remote_write.lua http://HOST:PORT/api/v1/write -- DIR COUNT
--
-- DIR holds rw-00000.bin ... (bench/pipeline/workload.py); every thread reads all COUNT bodies
-- in init() and formats each request once, so nothing is encoded while timing. Each thread
-- starts at a different offset. WRK_INTERVAL_MS=X (environment) paces the load for the latency
-- mode: each thread sends a request every X ms (so wrk as a whole threads * 1000 / X per
-- second). wrk asks delay() before every request of a connection, the first included; each call
-- takes the thread's next send slot (now if the schedule is behind: a missed slot is not made
-- up) and waits until it, so the rate holds whatever the latency, as long as a connection is
-- free. wrk starts its latency clock when the delayed request is written (a stall is not charged
-- to the requests it held back: a lower bound). At the end one line
-- "WRK_JSON {...}" gives requests, non-2xx/3xx answers (errors.status), errors and latency
-- percentiles (microseconds) for run.py.

local threads = {}
local requests = {}
local position = 1

local interval_ms = tonumber(os.getenv("WRK_INTERVAL_MS") or "0")
if interval_ms > 0 then
  local ffi = require("ffi")  -- wrk runs LuaJIT; clock_gettime gives a millisecond clock
  ffi.cdef([[
    typedef struct { long tv_sec; long tv_nsec; } phoenix_timespec;
    int clock_gettime(int clock_id, phoenix_timespec *tp);
  ]])
  local ts = ffi.new("phoenix_timespec")
  local function now_ms()
    ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
    return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
  end
  local next_slot = nil
  -- wrk looks for delay() right after loading the script, so it is defined here, not in init.
  function delay()
    local now = now_ms()
    local slot = math.max(now, next_slot or now)
    next_slot = slot + interval_ms
    return math.floor(slot - now + 0.5)
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
