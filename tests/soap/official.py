"""Access to the official OCPP-S WSDLs, which stay outside the project (`../shared/ocpp-wsdl/`)."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import zeep
from zeep.settings import Settings as ZeepSettings

from tests.harness import REPO

WSDL_DIR = REPO / ".." / "shared" / "ocpp-wsdl"
FILES = {
    ("cs", "1.6"): "OCPP_CentralSystemService_1.6.wsdl",
    ("cp", "1.6"): "OCPP_ChargePointService_1.6.wsdl",
    ("cs", "1.5"): "ocpp_centralsystemservice_1.5_final.wsdl",
    ("cp", "1.5"): "ocpp_chargepointservice_1.5_final.wsdl",
}


def path(role: str, version: str) -> Path:
    p = WSDL_DIR / FILES[(role, version)]
    if not p.is_file():
        pytest.skip(f"official WSDL not found at {p}")
    return p


@functools.lru_cache(maxsize=None)
def client(role: str, version: str) -> zeep.Client:
    settings = ZeepSettings(strict=True, forbid_entities=True, forbid_dtd=True, forbid_external=True)
    return zeep.Client(str(path(role, version)), settings=settings)
