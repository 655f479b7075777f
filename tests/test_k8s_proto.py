"""The device plugin API: the committed ``deviceplugin_pb2`` is what ``deviceplugin.proto``
compiles to today, the messages put each field at the documented v1beta1 number and wire type
(checked against bytes encoded by hand), and the hand-bound gRPC services (``dpapi``) name the
same methods, types and streaming as the ``.proto``'s services.
"""
from __future__ import annotations

import ast
import re

import pytest

from flexai.k8s import deviceplugin_pb2 as pb
from flexai.k8s import dpapi


def _serialized_file(text: str) -> bytes:
    m = re.search(r"AddSerializedFile\((b'.*?')\)\n", text, re.S)
    assert m, "no AddSerializedFile in the generated module"
    return ast.literal_eval(m.group(1))


def test_committed_module_is_what_the_proto_compiles_to():
    pytest.importorskip("grpc_tools")
    from flexai.k8s import protogen

    fresh = protogen.generate()
    committed = protogen.MODULE.read_text()
    assert _serialized_file(fresh) == _serialized_file(committed), \
        "deviceplugin_pb2.py is stale: python -m flexai.k8s.protogen"
    assert _serialized_file(committed) == pb.DESCRIPTOR.serialized_pb


def _s(field: int, text: str) -> bytes:
    """A length-delimited field by hand: tag (field << 3 | 2), length, bytes."""
    data = text.encode() if isinstance(text, str) else text
    return bytes([field << 3 | 2, len(data)]) + data


def test_messages_use_the_documented_field_numbers():
    reg = pb.RegisterRequest(version="v1beta1", endpoint="e.sock", resource_name="flexai.io/gpu",
                             options=pb.DevicePluginOptions(pre_start_required=True,
                                                            get_preferred_allocation_available=True))
    assert reg.SerializeToString() == (_s(1, "v1beta1") + _s(2, "e.sock") + _s(3, "flexai.io/gpu")
                                       + _s(4, b"\x08\x01\x10\x01"))
    dev = pb.Device(ID="GPU-1-0", health="Healthy",
                    topology=pb.TopologyInfo(nodes=[pb.NUMANode(ID=1)]))
    assert dev.SerializeToString() == (_s(1, "GPU-1-0") + _s(2, "Healthy")
                                       + _s(3, _s(1, b"\x08\x01")))
    law = pb.ListAndWatchResponse(devices=[pb.Device(ID="a")])
    assert law.SerializeToString() == _s(1, _s(1, "a"))
    areq = pb.AllocateRequest(container_requests=[pb.ContainerAllocateRequest(
        devices_ids=["a", "b"])])
    assert areq.SerializeToString() == _s(1, _s(1, "a") + _s(1, "b"))
    c = pb.ContainerAllocateResponse()
    c.envs["K"] = "V"
    c.mounts.add(container_path="/c", host_path="/h", read_only=True)
    c.devices.add(container_path="/dev/x", host_path="/dev/y", permissions="rw")
    c.annotations["A"] = "B"
    c.cdi_devices.add(name="v.com/gpu=0")
    assert c.SerializeToString() == (
        _s(1, _s(1, "K") + _s(2, "V")) + _s(2, _s(1, "/c") + _s(2, "/h") + b"\x18\x01")
        + _s(3, _s(1, "/dev/x") + _s(2, "/dev/y") + _s(3, "rw"))
        + _s(4, _s(1, "A") + _s(2, "B")) + _s(5, _s(1, "v.com/gpu=0")))
    assert pb.AllocateResponse(container_responses=[pb.ContainerAllocateResponse()]) \
        .SerializeToString() == _s(1, b"")
    pref = pb.ContainerPreferredAllocationRequest(available_deviceIDs=["a"],
                                                  must_include_deviceIDs=["b"],
                                                  allocation_size=2)
    assert pref.SerializeToString() == _s(1, "a") + _s(2, "b") + b"\x18\x02"
    assert pb.PreferredAllocationRequest(container_requests=[pref]).SerializeToString() == \
        _s(1, pref.SerializeToString())
    assert pb.ContainerPreferredAllocationResponse(deviceIDs=["x"]).SerializeToString() == \
        _s(1, "x")
    assert pb.PreStartContainerRequest(devices_ids=["d"]).SerializeToString() == _s(1, "d")


@pytest.mark.parametrize("service, table", [
    (dpapi.DEVICE_PLUGIN, dpapi.DEVICE_PLUGIN_METHODS),
    (dpapi.REGISTRATION, dpapi.REGISTRATION_METHODS),
])
def test_bound_services_match_the_proto(service, table):
    desc = pb.DESCRIPTOR.services_by_name[service.split(".")[1]]
    assert desc.full_name == service
    assert {m.name for m in desc.methods} == set(table)
    for m in desc.methods:
        req, resp, stream = table[m.name]
        assert m.input_type.full_name == req.DESCRIPTOR.full_name
        assert m.output_type.full_name == resp.DESCRIPTOR.full_name
        assert m.server_streaming == stream and not m.client_streaming


def test_protocol_constants():
    assert dpapi.VERSION == "v1beta1"
    assert (dpapi.HEALTHY, dpapi.UNHEALTHY) == ("Healthy", "Unhealthy")
    assert dpapi.KUBELET_SOCKET == "kubelet.sock"
    assert dpapi.PLUGIN_DIR == "/var/lib/kubelet/device-plugins"
