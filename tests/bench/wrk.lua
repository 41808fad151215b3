-- wrk script for the GeoCache HTTP JSON API (driven by tests/bench/run.sh).
-- Usage: wrk -t2 -c50 -d10s -s wrk.lua http://HOST:PORT -- <put|get> <keyspace> <value_bytes>
-- PUT writes a JSON document of exactly <value_bytes> bytes to a random key
-- key:NNNNNNNNNNNN (the key names redis-benchmark -r uses); GET reads a random key.
-- done() prints one JSON line (prefixed with BENCH_JSON) with the totals and latency
-- percentiles in microseconds.

local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("tid", thread_count)
end

local mode, keyspace, body
local headers = { ["Content-Type"] = "application/json" }

function init(args)
  mode = args[1] or "get"
  keyspace = tonumber(args[2] or "100000")
  local size = tonumber(args[3] or "200")
  math.randomseed(os.time() * 1000 + (tid or 0) * 7919)
  -- {"id":"bench","kind":"doc","tags":["a","b"],"pad":"xxxx..."} padded to `size` bytes.
  local head = '{"id":"bench","kind":"doc","tags":["a","b"],"n":12345,"pad":"'
  local tail = '"}'
  local pad = size - #head - #tail
  if pad < 0 then pad = 0 end
  body = head .. string.rep("x", pad) .. tail
end

function request()
  local path = string.format("/v1/keys/key:%012d", math.random(0, keyspace - 1))
  if mode == "put" then
    return wrk.format("PUT", path, headers, body)
  end
  return wrk.format("GET", path)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"err_connect":%d,"err_read":%d,' ..
    '"err_write":%d,"err_status":%d,"err_timeout":%d,"lat_mean_us":%.1f,"lat_p50_us":%d,' ..
    '"lat_p90_us":%d,"lat_p99_us":%d,"lat_max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency.mean, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
end
