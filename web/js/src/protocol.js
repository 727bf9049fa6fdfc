// Generated from monitor/protocol.py by `python -m monitor.protocol > web/js/src/protocol.js`;
// do not edit (tests/test_protocol.py checks that it is current).
export const PROTOCOL_VERSION = 2;
export const DASHBOARD_NAMESPACE = "/dashboard";
export const JOIN = "join";
export const LEAVE = "leave";
export const WATCH_RUNS = "watch_runs";
export const EVENTS = "events";
export const RUNS_CHANGED = "runs_changed";
export const RESYNC = "resync";
export const RUN_STATUS = "run_status";
export const STOP = "stop";
