"""The gateway's exceptions: one tree, rooted at `GatewayError`.

Adapters catch their library's exceptions at the boundary and raise one of these with the cause
kept (`raise LinkClosed(...) from exc`), so a traceback still shows what the library said. This
module imports nothing: the sans-I/O core (`gateway/protocol`) may raise from it too. Where a class
lives in another module (it needs that module's types), it is named there and imported from there.

    GatewayError
    ├── ConfigError                 the configuration cannot be used; the message names the key
    │                               (gateway.config; exit code 2)
    ├── StartupError                the gateway cannot start; `exit_code` says how it ends (below)
    │   ├── AlreadyRunning          another gateway holds the lock of this data_dir (exit 3)
    │   ├── ListenerUnavailable     a port cannot be bound (exit 4 for a charger port; the API is optional)
    │   └── StoreDamaged            the store failed its start-up check (exit 5)
    ├── ProtocolError               a peer broke OCPP-J, or a bound of the protocol core was hit
    │   ├── FrameError              a frame that cannot be accepted; carries the CALLERROR to send
    │   │                           (gateway.protocol.frames)
    │   ├── QueueFull               too many CALLs wait for one peer (gateway.protocol.rpc)
    │   └── MessageTooBig           a compressed WebSocket message inflates past the size limit
    │                               (adapters.deflate)
    ├── LinkError                   a charger or upstream connection
    │   ├── LinkClosed              closed: nothing more can be sent or received on it
    │   ├── LinkFailed              an upstream dial failed (refused, TLS, HTTP status, timeout)
    │   └── NotConnected            the charger has no live connection
    ├── OwnCallError                a CALL the gateway made (operator, local control) did not succeed
    │   ├── CallFailed              answered with a CALLERROR (`code`, `description`, `details`)
    │   ├── CallTimeout             no answer in time
    │   └── Busy                    too many calls already wait for this charger
    ├── ControlError                a pause/resume that cannot be done; `code` says why
    │                               (gateway.control.commands)
    ├── OperatorError               an operator request (REST, MQTT) not carried out; `kind` says why
    │                               (gateway.operator)
    ├── MirrorError                 a read or set of a charger's variables that cannot be done;
    │                               `code` says why (gateway.mirror)
    ├── StoreError                  the SQLite store failed an operation (adapters.sqlite_store)
    ├── StoreWriteFailed            the store cannot write now (disk full, I/O error): nothing of that
    │   │                           write was kept
    │   └── StoreFull               ... as the SQLite store raises it (also a StoreError; adapters.sqlite_store)
    ├── RequestError                an HTTP request of a charger transport cannot be served
    │   ├── BadRequest              a malformed WebSocket opening request (adapters.picows_server)
    │   ├── SoapError               answered with a SOAP Fault (adapters.soap.codec)
    │   ├── TooLarge                the body is over the limit (adapters.polled)
    │   └── TooSlow                 the body did not arrive in time (adapters.polled)
    └── OperatorClientError         the `ocpp-gateway status|call|outbox|health` client
        ├── ApiError                the API answered with an error status (gateway.opsclient)
        └── Unreachable             the API cannot be reached (gateway.opsclient)

Exit codes of `ocpp-gateway run` (docs/troubleshooting.md has the table an operator reads):
0 stopped cleanly, 1 an unexpected error (a bug: the traceback is logged), 2 configuration error,
3 already running, 4 a charger port is in use or cannot be bound, 5 the store is damaged.
The systemd unit restarts on none of 2-5: each needs an operator (or another process) first.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_CONFIG = 2
EXIT_ALREADY_RUNNING = 3
EXIT_LISTENER = 4
EXIT_STORE_DAMAGED = 5


class GatewayError(Exception):
    """The root of every exception the gateway raises on purpose."""


class ConfigError(GatewayError):
    """A configuration problem; the message names the offending key (e.g. `mqtt.url: ...`)."""

    exit_code = EXIT_CONFIG


class StartupError(GatewayError):
    """The gateway cannot start. `str()` is the one line printed for the operator; `exit_code`
    the process's exit status (documented, and not restarted by the systemd unit)."""

    exit_code = EXIT_UNEXPECTED


class AlreadyRunning(StartupError):
    """Another gateway holds the exclusive lock of this data_dir."""

    exit_code = EXIT_ALREADY_RUNNING


class ListenerUnavailable(StartupError):
    """A required listener (a charger port) cannot be bound: in use, or not an address of this host."""

    exit_code = EXIT_LISTENER


class StoreDamaged(StartupError):
    """The store failed its start-up check (integrity, schema version, or a file that is missing or
    empty although data_dir shows an earlier run)."""

    exit_code = EXIT_STORE_DAMAGED


class ProtocolError(GatewayError):
    """A peer broke OCPP-J, or a bound of the protocol core was hit."""


class LinkError(GatewayError):
    """Something about a charger or upstream connection."""


class LinkClosed(LinkError):
    """The link (charger or upstream) is closed; nothing more can be sent or received on it."""


class LinkFailed(LinkError):
    """An upstream connection attempt failed (refused, TLS, HTTP status, timeout, no subprotocol)."""


class NotConnected(LinkError):
    """The charger has no live connection."""


class OwnCallError(GatewayError):
    """A CALL the gateway made did not succeed."""


class CallFailed(OwnCallError):
    """A CALL the gateway made was answered with a CALLERROR."""

    def __init__(self, code: str, description: str, details: dict[str, object] | None = None) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description
        self.details = details or {}


class CallTimeout(OwnCallError):
    """A CALL the gateway made got no answer in time."""


class Busy(OwnCallError):
    """Too many calls are already waiting for this charger."""


class RequestError(GatewayError):
    """An HTTP request of a charger transport (SOAP, HTTP binding) that cannot be served."""


class OperatorClientError(GatewayError):
    """The operator client (`ocpp-gateway status|call|outbox|health`) failed."""


class StoreWriteFailed(GatewayError):
    """The store could not commit (disk full, I/O error, read-only file system): nothing of that
    write was kept. Whoever asked for it answers with an error instead of an acknowledgement."""
