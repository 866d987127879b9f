"""The fleet console (docs/console.md): a web page served by the coordinator itself, from the same
event log and state the gRPC API serves. `board` is the page's view of the log, `app` the HTTP
routes, `access` who may call them, `server` the listener that runs them beside the coordinator."""
