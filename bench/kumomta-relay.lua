--[[
KumoMTA's kumod as a pure relay on loopback, for `loadgen bench --kumomta BIN`
(loadgen/src/bench/relay.rs starts it; loadgen/src/bench/config.rs, kumod_env,
sets the variables below). Everything it accepts goes to the bench's sink,
with no DNS, no DKIM, no rewriting: the same job baton and Postfix get.

Settings, all from kumod's environment:

  KUMO_BENCH_LISTEN      SMTP listener, "127.0.0.1:PORT"; relays for 127.0.0.0/8
  KUMO_BENCH_HTTP        HTTP listener, "127.0.0.1:PORT" (kumod always runs one;
                         the bench does not use it)
  KUMO_BENCH_SINK        next hop of every domain, "IP:PORT" (an address, so
                         nothing is resolved)
  KUMO_BENCH_BASE        directory for the spool, the accounting database and
                         the logs; fresh for every run
  KUMO_BENCH_FORCE_SYNC  "1": every message is synced to the spool before its
                         250 (the "kumomta-sync" row); "0": KumoMTA's default,
                         written to the RocksDB spool before the 250 but not
                         synced (the "kumomta" row)
  KUMO_BENCH_TLS_CERTIFICATE, KUMO_BENCH_TLS_KEY
                         both set (`loadgen bench --tls`): the listener offers
                         STARTTLS with this chain and key, and delivery to the
                         sink requires TLS without checking the certificate,
                         like baton's `tls = "required"` and Postfix's
                         `smtp_tls_security_level = encrypt`. Unset: delivery
                         never tries TLS (the listener still offers STARTTLS
                         with a generated certificate; loadgen send does not
                         use it).

Connections to the sink are capped at 20, the default of baton
(`[shaping] connections_max`) and of Postfix
(`default_destination_concurrency_limit`), so that the three relays are
shaped alike.
]]
local kumo = require 'kumo'

-- A required setting: the policy refuses to start without it rather than
-- guess a port another process may own.
local function required(name)
  local value = os.getenv(name)
  if value == nil or value == '' then
    error(name .. ' is not set (this policy is started by loadgen bench --kumomta)')
  end
  return value
end

local function optional(name)
  local value = os.getenv(name)
  if value == '' then
    return nil
  end
  return value
end

local LISTEN = required 'KUMO_BENCH_LISTEN'
local HTTP = required 'KUMO_BENCH_HTTP'
local SINK = required 'KUMO_BENCH_SINK'
local BASE = required 'KUMO_BENCH_BASE'
local FORCE_SYNC = required 'KUMO_BENCH_FORCE_SYNC' == '1'
local TLS_CERTIFICATE = optional 'KUMO_BENCH_TLS_CERTIFICATE'
local TLS_KEY = optional 'KUMO_BENCH_TLS_KEY'

local SINK_HOST, SINK_PORT = SINK:match '^(.+):(%d+)$'
if SINK_HOST == nil then
  error('KUMO_BENCH_SINK must be IP:PORT, not ' .. SINK)
end
if (TLS_CERTIFICATE == nil) ~= (TLS_KEY == nil) then
  error 'KUMO_BENCH_TLS_CERTIFICATE and KUMO_BENCH_TLS_KEY go together'
end
local TLS = TLS_CERTIFICATE ~= nil

-- The shaping of the one destination (the sink): the connection cap of the
-- other relays, and no other limit that could be the bottleneck.
local SINK_CONNECTIONS_MAX = 20
local READY_MESSAGES_MAX = 1000000
local MESSAGES_PER_CONNECTION_MAX = 1000000
-- By default kumod answers 4xx to MAIL after 10,000 messages on one
-- connection; loadgen send keeps its connections for the whole run.
local CLIENT_MESSAGES_PER_CONNECTION_MAX = 1000000000

kumo.on('init', function()
  -- RocksDB for message data and metadata, on KumoMTA's default durability.
  for _, name in ipairs { 'data', 'meta' } do
    kumo.define_spool {
      name = name,
      path = BASE .. '/spool/' .. name,
      kind = 'RocksDB',
    }
  end
  kumo.configure_accounting_db_path(BASE .. '/accounting.db')
  -- Reception and delivery records, as a production relay keeps them (baton
  -- logs a line per message too).
  kumo.configure_local_logs {
    log_dir = BASE .. '/logs',
  }
  kumo.start_http_listener {
    listen = HTTP,
    trusted_hosts = { '127.0.0.1' },
  }
  kumo.start_esmtp_listener {
    listen = LISTEN,
    hostname = 'kumomta-bench.invalid',
    relay_hosts = { '127.0.0.0/8' },
    max_messages_per_connection = CLIENT_MESSAGES_PER_CONNECTION_MAX,
    tls_certificate = TLS_CERTIFICATE,
    tls_private_key = TLS_KEY,
  }
end)

-- Every domain is delivered to the sink's address: no MX lookup.
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {
    protocol = { smtp = { mx_list = { '[' .. SINK_HOST .. ']' } } },
  }
end)

kumo.on('get_egress_path_config', function(routing_domain, egress_source, site_name)
  return kumo.make_egress_path {
    smtp_port = tonumber(SINK_PORT),
    enable_tls = TLS and 'RequiredInsecure' or 'Disabled',
    enable_mta_sts = false,
    enable_dane = false,
    -- By default loopback counts as a mail loop; here it is the next hop.
    prohibited_hosts = {},
    connection_limit = SINK_CONNECTIONS_MAX,
    max_ready = READY_MESSAGES_MAX,
    max_deliveries_per_connection = MESSAGES_PER_CONNECTION_MAX,
  }
end)

if FORCE_SYNC then
  kumo.on('smtp_server_message_received', function(msg)
    msg:set_force_sync(true)
  end)
end
