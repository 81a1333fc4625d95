"""Settings: TOML file, then `OCPPGW_<SECTION>__<KEY>` environment overrides, then embedded defaults.

Where the file comes from: `-c FILE`, else `$OCPPGW_CONFIG`, else `./gateway.toml`, else none (the
embedded defaults: standalone, no MQTT, no InfluxDB, store under `./data`).

Every key is listed with its default in `config/gateway.example.toml`; `tests/test_config.py` checks
that the example and this module agree. Secrets are `SecretStr`: they print as `**********`.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from gateway.control.settings import ControlSettings, DeratingRule, DeratingSettings, SiteSettings
from gateway.errors import ConfigError as ConfigError  # raised here; importable from here as before
from gateway.protocol.frames import OcppVersion

ENV_PREFIX = "OCPPGW_"
CONFIG_ENV = "OCPPGW_CONFIG"
DEFAULT_FILE = "gateway.toml"


def _networks(v: list[str]) -> list[str]:
    for net in v:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError as exc:
            raise ValueError(f"{net!r} is not a network (e.g. 127.0.0.0/8)") from exc
    return v


def _listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("must be HOST:PORT, e.g. 0.0.0.0:9000")
    return value


def _http_path(value: str) -> str:
    if not re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", value):
        raise ValueError("must be a path like /ocpp-s: segments of A-Z a-z 0-9 . _ ~ -, no trailing /")
    return value


def split_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


def is_loopback(listen: str) -> bool:
    host, _ = split_listen(listen)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class WebSocketSettings(_Section):
    listen: str = "0.0.0.0:9000"
    path: str = "/ocpp"
    versions: list[OcppVersion] = Field(default_factory=lambda: [OcppVersion.V21, OcppVersion.V201, OcppVersion.V16])
    security_profile: int = Field(0, ge=0, le=3)
    allow_unknown: bool = True
    ping_interval: float = Field(20.0, ge=0)  # 0 = no pings from the gateway
    ping_timeout: float = Field(20.0, gt=0)
    # bytes (inflated); larger messages close the connection with 1009. 1 MiB: 2.5 times a 2.x
    # NotifyReport of a whole device model in one message (1000 variables, ~400 kB); docs/security.md
    max_frame_size: int = Field(1_048_576, ge=4096)
    max_buffered_bytes: int = Field(67_108_864, ge=65_536)  # all connections' unread message bytes; beyond: 1013
    message_timeout: float = Field(30.0, ge=0)  # s to finish a begun message, else 1008; 0 = no deadline
    max_handshakes_per_address: int = Field(20, ge=1)  # unfinished handshakes per address (IPv6: /64); more dropped
    max_connections_per_address: int = Field(100, ge=1)  # per address, ids without [chargers.ID]; more get 503
    # not limited per address (handshakes, connections): loopback = a reverse proxy on this host, local tools
    unlimited_networks: list[str] = Field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    compression: bool = True  # offer permessage-deflate (RFC 7692; required for a CSMS/LC in 2.0.1)
    # what carries the frames on the charger port: "picows" (Cython framing, the cheaper per frame)
    # or "websockets" (the pure-Python reference); both keep every promise of this section
    transport: Literal["picows", "websockets"] = "picows"
    handshake_timeout: float = Field(10.0, gt=0)
    call_timeout: float = Field(30.0, gt=0)  # how long a charger has to answer a CALL
    max_queued_calls: int = Field(100, ge=1)  # CALLs waiting for the charger's line; more are refused
    tls_cert: str = ""  # PEM server certificate (chain): wss:// when security_profile >= 2
    tls_key: str = ""  # PEM private key of tls_cert
    tls_ca: str = ""  # PEM CA bundle for charger client certificates (profile 3)
    max_connections: int = Field(1000, ge=1)  # connections of unconfigured ids + handshakes; more: 503
    max_messages_per_second: float = Field(20.0, ge=0)  # per charger; beyond it its frames are read later; 0 = off
    message_burst: int = Field(100, ge=1)  # frames a charger may send at once before the rate applies
    max_auth_failures: int = Field(5, ge=0)  # failed logins per source address within the window; then 429; 0 = off
    auth_failure_window: float = Field(60.0, gt=0)  # s over which max_auth_failures are forgiven

    _v_listen = field_validator("listen")(classmethod(lambda cls, v: _listen(v)))

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/") or v.endswith("/") and v != "/":
            raise ValueError("must start with / and not end with / (e.g. /ocpp)")
        return v.rstrip("/")

    _v_unlimited = field_validator("unlimited_networks")(classmethod(lambda cls, v: _networks(v)))

    @field_validator("versions")
    @classmethod
    def _versions(cls, v: list[OcppVersion]) -> list[OcppVersion]:
        if not v:
            raise ValueError("at least one OCPP version")
        return v


class SoapSettings(_Section):
    enabled: bool = False
    listen: str = "0.0.0.0:9001"
    path: str = "/ocpp-s"
    idle_timeout: float = Field(900.0, gt=0)  # s without a request before a SOAP charger's session ends
    max_body_size: int = Field(1_048_576, ge=4096)  # bytes, after gzip/deflate decoding
    max_connections: int = Field(1000, ge=1)  # open HTTP connections on this port; more get 503
    idle_connection_timeout: float = Field(60.0, gt=0)  # s a connection may go without a whole request
    # networks where loopback, link-local or the gateway's own addresses may be a charger's endpoint
    trusted_endpoint_networks: list[str] = Field(default_factory=list)
    _v_listen = field_validator("listen")(classmethod(lambda cls, v: _listen(v)))
    _v_path = field_validator("path")(classmethod(lambda cls, v: _http_path(v)))
    _v_networks = field_validator("trusted_endpoint_networks")(classmethod(lambda cls, v: _networks(v)))


class HttpSettings(_Section):
    enabled: bool = False
    listen: str = "0.0.0.0:9002"
    path: str = "/ocpp-http"
    idle_timeout: float = Field(900.0, gt=0)  # s without a request or poll before a device's session ends
    max_wait: float = Field(60.0, ge=0)  # longest long poll (s) for GET .../calls?wait=S
    max_body_size: int = Field(1_048_576, ge=4096)  # bytes per POSTed frame
    max_connections: int = Field(1000, ge=1)  # open HTTP connections on this port; more get 503
    idle_connection_timeout: float = Field(60.0, gt=0)  # s a connection may go without a whole request
    _v_listen = field_validator("listen")(classmethod(lambda cls, v: _listen(v)))
    _v_path = field_validator("path")(classmethod(lambda cls, v: _http_path(v)))


class UpstreamSettings(_Section):
    url: str = ""  # empty: standalone
    offline_mode: Literal["buffer", "strict"] = "buffer"
    ca_file: str = ""  # PEM bundle for wss://; empty = the system's trust store
    # offer permessage-deflate to the CSMS: saves uplink bytes but costs ~40 KiB of memory per
    # charger (zlib state on both directions; measured with bench/relay.py), so it is off by default
    compression: bool = False
    transport: Literal["picows", "websockets"] = "picows"  # what carries the frames to the CSMS (see [websocket])
    connect_timeout: float = Field(10.0, gt=0)
    call_timeout: float = Field(30.0, gt=0)  # how long the CSMS has to answer
    # A charger never waits longer than this for the answer to a CALL it sent: then the gateway
    # answers as it would offline (committing first what the outbox keeps) and takes the CSMS's
    # late answer as the answer to the stored message. 8 s: under the 10 s message timeout that
    # the shortest common charger settings use (30 s is the usual one), with room for the local
    # answer, a durable commit and a slow cellular round trip.
    answer_within: float = Field(8.0, gt=0)
    # Keepalive of each upstream link: a WebSocket ping once the link has carried nothing from the
    # CSMS for ping_interval (a frame from it proves the link as a pong does, so a busy link is not
    # pinged), the link is declared dead when no pong came within ping_timeout (and at once probed
    # like that when a CALL got no answer within answer_within). A silent link is noticed within
    # ping_interval + ping_timeout (15 s) of the last frame at most; 0 = no periodic pings (the
    # probe after a late answer still runs).
    ping_interval: float = Field(5.0, ge=0)
    ping_timeout: float = Field(10.0, gt=0)
    reconnect_min: float = Field(1.0, gt=0)  # first retry delay, seconds
    reconnect_max: float = Field(120.0, gt=0)  # cap of the exponential backoff
    # While a link waits out a backoff longer than this, it tries a cheap probe dial this often
    # (jittered, within max_concurrent_dials): a site notices the CSMS's return within seconds.
    probe_interval: float = Field(5.0, gt=0)
    max_concurrent_dials: int = Field(20, ge=1)  # site-wide cap on simultaneous upstream connects
    client_cert: str = ""  # PEM client certificate the gateway presents to a wss:// CSMS (profile 3)
    client_key: str = ""  # PEM private key of client_cert
    authorization_key_bytes: bool = True  # 1.6: a hex upstream_password goes as its raw bytes (J16 §6.2.2)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if v and not re.match(r"^wss?://[^/\s]+(/\S*)?$", v):
            raise ValueError("must be empty or a ws:// or wss:// URL")
        return v.rstrip("/")


class LocalSettings(_Section):
    heartbeat_interval: int = Field(300, ge=1)  # interval in the gateway's own BootNotification answer


class AuthSettings(_Section):
    unknown_id_tags: Literal["reject", "accept"] = "reject"
    local_list: list[str] = Field(default_factory=list)  # id tags always accepted locally
    cache_lifetime: int = Field(604_800, ge=0)  # s an answer learned from the CSMS stays valid without expiryDate


class OfflineSettings(_Section):
    """Store-and-forward while the CSMS is unreachable ([upstream].offline_mode = "buffer")."""

    # 1.6 transaction ids the gateway issues itself while offline: a range no CSMS reaches in
    # practice (ids count up from 1), inside a signed 32-bit int (the SOAP schemas say s:int).
    transaction_id_min: int = Field(2_000_000_000, ge=-2_147_483_648, le=2_147_483_647)
    transaction_id_max: int = Field(2_147_483_646, ge=-2_147_483_648, le=2_147_483_647)
    # Bounds. A week-long outage of a 50-charger site: ~700 messages a day per charger
    # (meter values every minute for ~10 h of charging, starts, stops, status) = ~5 000 a week;
    # 20 000 per charger is four times that, 1 000 000 in total covers 50 such chargers.
    max_messages_per_charger: int = Field(20_000, ge=10)
    max_messages_total: int = Field(1_000_000, ge=10)
    meter_values_without_transaction: Literal["replay", "drop"] = "replay"
    replay_actions: list[str] = Field(default_factory=lambda: ["SecurityEventNotification"])
    stop_on_invalid_replayed_start: bool = True
    # keep every StatusNotification of an outage for the CSMS (bounded like the rest) instead of
    # only the latest per connector: for a CSMS that keeps availability history
    status_history: bool = False
    # 1.6 id mappings (local id -> the CSMS's) are kept this long after the CSMS acknowledged the
    # stop, so a late MeterValues or a retried StopTransaction still gets the CSMS's id; at most
    # id_map_max such finished mappings are kept (the oldest go first)
    id_map_grace: float = Field(7 * 86_400.0, ge=0)
    id_map_max: int = Field(10_000, ge=10)

    @model_validator(mode="after")
    def _range(self) -> "OfflineSettings":
        if self.transaction_id_min > self.transaction_id_max:
            raise ValueError("transaction_id_min must not exceed transaction_id_max")
        if self.transaction_id_min <= -1 <= self.transaction_id_max:
            raise ValueError("the transaction id range must not contain -1 (OCPP 1.6: 'no id received')")
        return self


DEFAULT_COMMAND_ACTIONS = (
    "Pause", "Resume", "Limit", "SiteLimit", "Reset", "UnlockConnector", "TriggerMessage", "RemoteStartTransaction",
    "RemoteStopTransaction", "RequestStartTransaction", "RequestStopTransaction", "ChangeAvailability",
    "GetConfiguration", "GetVariables", "GetCompositeSchedule", "GetLocalListVersion", "GetTransactionStatus",
    "ClearCache", "Variables",
)


class MqttSettings(_Section):
    url: SecretStr = SecretStr("")  # may carry user:password
    topic_prefix: str = "ocpp"
    qos: int = Field(1, ge=0, le=2)
    ha_discovery: bool = False
    ha_prefix: str = "homeassistant"  # Home Assistant's discovery prefix
    ha_max_current_a: float = Field(32.0, gt=0, le=1000)  # the maximum of the per-EVSE current-limit numbers (A)
    client_id: str = ""  # empty: "ocpp-gateway-{site_id}-{install id}" (data_dir/install-id; unique per install)
    protocol_version: Literal[5, 4] = 5  # 5 = MQTT 5 (response topic, correlation data), 4 = MQTT 3.1.1
    ca_file: str = ""  # PEM bundle for mqtts://; empty = the system's trust store
    keepalive: int = Field(30, ge=5)
    reconnect_min: float = Field(1.0, gt=0)
    reconnect_max: float = Field(30.0, gt=0)
    queue_size: int = Field(10_000, ge=10)  # records waiting in memory; more are dropped (counted)
    spool_max: int = Field(100_000, ge=10)  # messages spooled to disk while the broker is away; oldest go first
    # s between updates of a retained .../meter/{measurand} or .../environment/{name} topic
    retained_min_interval: float = Field(0.0, ge=0)
    retained_deadband: float = Field(0.0, ge=0)  # skip such an update when the value moved less than this
    retained_max_interval: float = Field(900.0, gt=0)  # ...but publish at least this often (s)
    # actions anyone who may publish to .../chargers/+/cmd/+ can send; "*" = all. Left out by default:
    # what changes credentials, certificates, firmware, network or authorization lists
    # (ChangeConfiguration and SetVariables can set AuthorizationKey / BasicAuthPassword).
    command_actions: list[str] = Field(default_factory=lambda: list(DEFAULT_COMMAND_ACTIONS))
    # QoS 0/1 PUBLISH packets framed by the gateway on paho's socket (adapters/mqtt/framing.py);
    # false: every message goes through paho's own publish (slower, no paho internals used)
    fast_publish: bool = True

    @field_validator("url")
    @classmethod
    def _mqtt_url(cls, v: SecretStr) -> SecretStr:
        if v.get_secret_value() and not re.match(r"^(mqtts?|tcp|ssl)://[^/\s]+/?$", v.get_secret_value()):
            raise ValueError("must be empty or mqtt://[user:pass@]HOST[:PORT] or mqtts://...")
        return v

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v or "+" in v or "#" in v or v.startswith("/") or v.endswith("/"):
            raise ValueError("a topic prefix without wildcards or leading/trailing /")
        return v


class InfluxSettings(_Section):
    url: str = ""
    api: Literal["v2", "v1"] = "v2"
    org: str = ""
    bucket: str = ""
    token: SecretStr = SecretStr("")
    database: str = ""
    username: str = ""
    password: SecretStr = SecretStr("")
    ca_file: str = ""  # PEM bundle for https://; empty = the system's trust store
    batch_size: int = Field(5000, ge=1)  # points per write (InfluxDB recommends about 5000 lines per request)
    flush_interval: float = Field(1.0, ge=0)  # s to wait for a batch to fill
    timeout: float = Field(10.0, gt=0)  # s per write request
    retry_min: float = Field(1.0, gt=0)  # first retry delay after a failed write; doubles, with jitter
    retry_max: float = Field(60.0, gt=0)
    queue_size: int = Field(10_000, ge=10)  # records waiting in memory; more are dropped (counted)
    spool_max: int = Field(1_000_000, ge=10)  # points spooled to disk while InfluxDB is away; oldest go first

    @model_validator(mode="after")
    def _complete(self) -> "InfluxSettings":
        if self.url:
            if not re.match(r"^https?://[^/\s]+", self.url):
                raise ValueError("url must be http:// or https://")
            if self.api == "v2" and not self.bucket:
                raise ValueError("bucket is required with api = \"v2\"")
            if self.api == "v1" and not self.database:
                raise ValueError("database is required with api = \"v1\"")
        return self


class VariablesSettings(_Section):
    """The variables mirror (README "Charger variables"): each charger's configuration keys / device model."""

    enabled: bool = True  # read each charger's variables after its boot, keep them current from the traffic
    read_delay: float = Field(10.0, ge=0)  # s after a charger's boot (its boot traffic) before the gateway reads
    report_base: Literal["FullInventory", "ConfigurationInventory"] = "FullInventory"  # 2.x GetBaseReport
    report_timeout: float = Field(60.0, gt=0)  # s without a NotifyReport part before a report counts as cut short
    call_timeout: float = Field(30.0, gt=0)  # s a charger has to answer the gateway's GetConfiguration / sets
    max_per_charger: int = Field(20_000, ge=10)  # variables kept per charger; more are counted as dropped
    # names (fnmatch patterns) that REST, CLI and MQTT may set; credentials need allow_credentials too
    set_allowed: list[str] = Field(default_factory=lambda: ["*"])
    allow_credentials: bool = False  # setting AuthorizationKey, BasicAuthPassword, ... through the mirror
    secret_names: list[str] = Field(default_factory=list)  # more names (fnmatch, case-insensitive) kept secret
    publish: bool = True  # retained MQTT topic per value (.../chargers/{id}/variables/{name})
    # variables shown as Home Assistant diagnostic entities (fnmatch on the name; settable ones as number/select/text)
    home_assistant: list[str] = Field(default_factory=lambda: [
        "HeartbeatInterval", "MeterValueSampleInterval", "OCPPCommCtrlr/HeartbeatInterval",
        "SampledDataCtrlr/TxUpdatedInterval", "AlignedDataCtrlr/Interval", "*FirmwareVersion*", "*/Temperature",
        "*/Humidity"])


class EnvironmentSettings(_Section):
    """`ensure`: make each charger report temperature (and humidity) from what its variables offer."""

    ensure: bool = False
    periodic: float = Field(300.0, ge=0)  # s, 2.x Periodic monitor on Temperature/Humidity variables; 0 = none
    delta_temperature: float = Field(1.0, ge=0)  # °C, 2.x Delta monitor; 0 = none
    delta_humidity: float = Field(5.0, ge=0)  # %RH, 2.x Delta monitor; 0 = none


class ApiSettings(_Section):
    listen: str = "127.0.0.1:8080"
    # None (unset): generated on first start, kept in data_dir/api-token; "": no token (loopback only)
    token: SecretStr | None = None
    allowed_hosts: list[str] = Field(default_factory=list)  # Host names served besides addresses and localhost
    _v_listen = field_validator("listen")(classmethod(lambda cls, v: _listen(v)))


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"
    journal: str = ""  # traffic journal file (one JSON line per frame); empty = off
    journal_max_mb: int = Field(100, ge=1)  # rotated to <journal>.1 beyond this size

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v


class ChargerSettings(_Section):
    password: SecretStr = SecretStr("")
    upstream_password: SecretStr = SecretStr("")
    offline_mode: Literal["buffer", "strict"] | None = None  # None: [upstream].offline_mode
    derating: DeratingRule | None = None  # None: the site-wide [derating] rule (when enabled)
    security_profile: int | None = Field(None, ge=0, le=3)  # None: [websocket].security_profile
    # the unit of the gateway's charging profiles for this charger; unset: what the charger reports (A if both)
    rate_unit: Literal["A", "W"] | None = None
    phases: int | None = Field(None, ge=1, le=3)  # unset: what the charger reports, else [site].phases
    soap_endpoint: str = ""  # OCPP-S: the charger's ChargePointService URL; set, wsa:From cannot move it

    @field_validator("soap_endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        if v and not re.match(r"^https?://[^/\s]+(/\S*)?$", v):
            raise ValueError("must be empty or an http:// or https:// URL")
        return v


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    site_id: str = "site"
    data_dir: str = "./data"
    cache_dir: str = ""
    websocket: WebSocketSettings = WebSocketSettings()
    soap: SoapSettings = SoapSettings()
    http: HttpSettings = HttpSettings()
    upstream: UpstreamSettings = UpstreamSettings()
    local: LocalSettings = LocalSettings()
    auth: AuthSettings = AuthSettings()
    offline: OfflineSettings = OfflineSettings()
    mqtt: MqttSettings = MqttSettings()
    influx: InfluxSettings = InfluxSettings()
    api: ApiSettings = ApiSettings()
    logging: LoggingSettings = LoggingSettings()
    site: SiteSettings = SiteSettings()
    control: ControlSettings = ControlSettings()
    derating: DeratingSettings = DeratingSettings()
    variables: VariablesSettings = VariablesSettings()
    environment: EnvironmentSettings = EnvironmentSettings()
    chargers: dict[str, ChargerSettings] = Field(default_factory=dict)

    @field_validator("site_id")
    @classmethod
    def _site(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", v):
            raise ValueError("1 to 64 characters of A-Z a-z 0-9 . _ -")
        return v

    @model_validator(mode="after")
    def _cross(self) -> "Settings":
        from gateway.identity import validate_charger_id

        for cid in self.chargers:
            problem = validate_charger_id(cid)
            if problem:
                raise ValueError(f"chargers.{cid}: {problem}")
            own = self.chargers[cid].security_profile
            if own is not None and (own >= 2) != (self.websocket.security_profile >= 2):
                raise ValueError(f"chargers.{cid}.security_profile: {own} needs a {'TLS' if own >= 2 else 'plain'} "
                                 "server: [websocket].security_profile 0/1 serve profiles 0/1, 2/3 serve 2/3")
        if bool(self.upstream.client_cert) != bool(self.upstream.client_key):
            raise ValueError("upstream.client_cert: client_cert and client_key go together")
        if not is_loopback(self.api.listen) and self.api.token is not None and not self.api.token.get_secret_value():
            raise ValueError(f"api.token: must not be empty when api.listen ({self.api.listen}) is not a loopback "
                             "address (leave it unset for a generated one)")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment over file (passed as init values) over defaults.
        return (_EnvSource(settings_cls), init_settings)

    def offline_mode(self, charger_id: str) -> str:
        c = self.chargers.get(charger_id)
        return (c.offline_mode if c and c.offline_mode else None) or self.upstream.offline_mode

    def security_profile(self, charger_id: str) -> int:
        c = self.chargers.get(charger_id)
        return c.security_profile if c and c.security_profile is not None else self.websocket.security_profile

    def charger(self, charger_id: str) -> ChargerSettings | None:
        return self.chargers.get(charger_id)


class _EnvSource(PydanticBaseSettingsSource):
    """`OCPPGW_<SECTION>__<KEY>` variables, merged key by key over the file's values.

    Only variables with the prefix are read; `OCPPGW_CONFIG` names the file and is skipped.
    Values are parsed as TOML values when they look like one (numbers, booleans, arrays), else
    taken as strings, so `OCPPGW_WEBSOCKET__VERSIONS='["ocpp1.6"]'` and `OCPPGW_MQTT__QOS=0` work.
    """

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, raw in os.environ.items():
            if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
                continue
            path = [p.lower() for p in name[len(ENV_PREFIX):].split("__")]
            if path[0] == "chargers" and len(path) == 3:
                # the charger id keeps its case: OCPPGW_CHARGERS__CP001__PASSWORD
                path[1] = name[len(ENV_PREFIX):].split("__")[1]
            node = out
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = _env_value(raw)
        return out


def _env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def config_path(explicit: str | None) -> Path | None:
    if explicit:
        return Path(explicit)
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    if Path(DEFAULT_FILE).is_file():
        return Path(DEFAULT_FILE)
    return None


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(root)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
            if key == "(root)" and ": " in msg:  # cross-section checks name their key first
                key, msg = msg.split(": ", 1)
        lines.append(f"{key}: {msg}")
    return "\n".join(lines)


def load_settings(path: str | None = None) -> tuple[Settings, Path | None]:
    """Read the settings; raises ConfigError naming the key on any problem."""
    file = config_path(path)
    data: dict[str, Any] = {}
    if file is not None:
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"{file}: no such file") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: not valid TOML: {exc}") from exc
    try:
        settings = Settings(**data)  # the environment source is merged over `data` key by key
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc)) from exc
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    return settings, file


def masked(settings: Settings) -> dict[str, Any]:
    """The effective configuration as plain data, secrets masked (non-empty secrets print as ********)."""

    def walk(value: Any) -> Any:
        if isinstance(value, SecretStr):
            return "********" if value.get_secret_value() else ""
        if isinstance(value, BaseModel):
            return {k: walk(getattr(value, k)) for k in type(value).model_fields}
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, OcppVersion):
            return value.value
        return value

    shown = walk(settings)
    shown["mqtt"]["url"] = mask_url_credentials(settings.mqtt.url.get_secret_value())
    return shown


def mask_url_credentials(url: str) -> str:
    """The URL with its user information masked, the rest as it is: `mqtt://user:pw@host:1883` shows as
    `mqtt://********@host:1883` (a user name can be a token too), `mqtt://host:1883` unchanged."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, path = rest.partition("/")
    if "@" not in authority:
        return url
    return f"{scheme}://********@{authority.rpartition('@')[2]}{slash}{path}"
