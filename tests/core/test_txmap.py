"""TxIdMap: the one place where a 1.6 transaction id is rewritten between the charger's local id
and the CSMS's (gateway/protocol/txmap.py)."""

from __future__ import annotations

from gateway.protocol.txmap import UNSTARTED, TxIdMap


def test_an_empty_map_names_nothing_and_rewrites_nothing() -> None:
    tx = TxIdMap()

    assert not tx and len(tx) == 0
    assert tx.lookup("MeterValues", {"connectorId": 1, "transactionId": 5, "meterValue": []}) is None
    assert tx.for_charger("RemoteStopTransaction", {"transactionId": 5}) is None


def test_a_local_id_is_unstarted_until_the_csms_id_is_bound() -> None:
    tx = TxIdMap()
    tx.bind(2_000_000_000, None)
    stop = {"transactionId": 2_000_000_000, "meterStop": 10, "timestamp": "2026-01-01T00:00:00Z"}

    assert tx.lookup("StopTransaction", stop) == (2_000_000_000, UNSTARTED)
    assert tx.for_charger("RemoteStopTransaction", {"transactionId": 2_000_000_000}) is None  # the CSMS has no id yet

    tx.bind(2_000_000_000, 777)

    assert tx.lookup("StopTransaction", stop) == (2_000_000_000, 777)
    assert TxIdMap.for_csms("StopTransaction", stop, 777) == {**stop, "transactionId": 777}
    assert stop["transactionId"] == 2_000_000_000  # the charger's payload is not changed in place


def test_csms_commands_reach_the_charger_with_its_local_id() -> None:
    tx = TxIdMap()
    tx.bind(2_000_000_001, 42)
    profile = {"connectorId": 1, "csChargingProfiles": {"chargingProfileId": 9, "transactionId": 42, "stackLevel": 0,
                                                        "chargingProfilePurpose": "TxProfile",
                                                        "chargingProfileKind": "Relative",
                                                        "chargingSchedule": {"chargingRateUnit": "A",
                                                                             "chargingSchedulePeriod": []}}}

    assert tx.for_charger("RemoteStopTransaction", {"transactionId": 42}) == {"transactionId": 2_000_000_001}
    rewritten = tx.for_charger("SetChargingProfile", profile)
    assert rewritten is not None and rewritten["csChargingProfiles"]["transactionId"] == 2_000_000_001
    assert rewritten["csChargingProfiles"]["chargingProfileId"] == 9
    assert profile["csChargingProfiles"]["transactionId"] == 42  # not changed in place
    assert tx.for_charger("RemoteStopTransaction", {"transactionId": 43}) is None  # an id the gateway did not issue
    assert tx.for_charger("GetConfiguration", {"key": ["42"]}) is None


def test_only_transaction_messages_carry_ids_and_only_mapped_ids_are_rewritten() -> None:
    tx = TxIdMap()
    tx.bind(7, 70)

    assert tx.lookup("MeterValues", {"connectorId": 1, "transactionId": 7, "meterValue": []}) == (7, 70)
    assert tx.lookup("MeterValues", {"connectorId": 1, "transactionId": 8, "meterValue": []}) is None
    assert tx.lookup("StatusNotification", {"transactionId": 7}) is None  # not a message that carries one
    assert tx.lookup("StopTransaction", {"transactionId": "7"}) is None  # not an integer id


def test_a_stop_is_remembered_and_unbinding_forgets_both_directions() -> None:
    tx = TxIdMap()
    tx.bind(7, 70)
    assert tx.running(7)

    tx.note_stop("MeterValues", {"transactionId": 7})
    assert tx.running(7)
    tx.note_stop("StopTransaction", {"transactionId": 7})
    assert not tx.running(7)
    tx.note_stop("StopTransaction", {"transactionId": 99})  # not one of the gateway's ids
    assert 99 not in tx.stopped

    tx.unbind(7)

    assert 7 not in tx and tx.running(7)
    assert tx.csms_to_local == {}
    assert tx.for_charger("RemoteStopTransaction", {"transactionId": 70}) is None
    tx.unbind(7)  # twice: nothing to do
