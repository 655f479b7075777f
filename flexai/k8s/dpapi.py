"""The kubelet's device plugin API v1beta1 bound to gRPC: the protocol's constants, the two
services' method tables, and small client stubs. The device plugin and the tests' fake kubelet
both use this one module, so they speak the same wire format by construction.

The messages come from ``deviceplugin_pb2`` (generated from our ``deviceplugin.proto``); the
services are bound here by hand with gRPC's generic handlers instead of generated ``_pb2_grpc``
code. This module must never hold state or start servers itself.
"""
from __future__ import annotations

from typing import Any, Callable

import grpc

from . import deviceplugin_pb2 as pb
from .resources import PLUGIN_DIR

#: The only API version the kubelet accepts from this plugin.
VERSION = "v1beta1"
#: The kubelet's registration socket in its plugin directory (``PLUGIN_DIR``).
KUBELET_SOCKET = "kubelet.sock"
#: Device health, exactly as the kubelet compares it.
HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"

__all__ = ["PLUGIN_DIR", "VERSION", "KUBELET_SOCKET", "HEALTHY", "UNHEALTHY",
           "add_device_plugin", "add_registration", "DevicePluginStub", "RegistrationStub",
           "unix_target"]

REGISTRATION = "v1beta1.Registration"
DEVICE_PLUGIN = "v1beta1.DevicePlugin"

#: method -> (request type, response type, streams the response)
DEVICE_PLUGIN_METHODS = {
    "GetDevicePluginOptions": (pb.Empty, pb.DevicePluginOptions, False),
    "ListAndWatch": (pb.Empty, pb.ListAndWatchResponse, True),
    "GetPreferredAllocation": (pb.PreferredAllocationRequest, pb.PreferredAllocationResponse,
                               False),
    "Allocate": (pb.AllocateRequest, pb.AllocateResponse, False),
    "PreStartContainer": (pb.PreStartContainerRequest, pb.PreStartContainerResponse, False),
}
REGISTRATION_METHODS = {"Register": (pb.RegisterRequest, pb.Empty, False)}


def _handler(service: str, methods: dict, impl: Any) -> grpc.GenericRpcHandler:
    table = {}
    for name, (req, resp, stream) in methods.items():
        make = grpc.unary_stream_rpc_method_handler if stream else \
            grpc.unary_unary_rpc_method_handler
        table[name] = make(getattr(impl, name), request_deserializer=req.FromString,
                           response_serializer=resp.SerializeToString)
    return grpc.method_handlers_generic_handler(service, table)


def add_device_plugin(server: grpc.Server, impl: Any) -> None:
    """Serve ``impl`` (methods named as in :data:`DEVICE_PLUGIN_METHODS`, each
    ``(request, context)``) as ``v1beta1.DevicePlugin`` on ``server``."""
    server.add_generic_rpc_handlers((_handler(DEVICE_PLUGIN, DEVICE_PLUGIN_METHODS, impl),))


def add_registration(server: grpc.Server, impl: Any) -> None:
    """Serve ``impl.Register(request, context)`` as ``v1beta1.Registration`` (the kubelet's
    side; the tests' fake kubelet)."""
    server.add_generic_rpc_handlers((_handler(REGISTRATION, REGISTRATION_METHODS, impl),))


class _Stub:
    def __init__(self, channel: grpc.Channel, service: str, methods: dict) -> None:
        for name, (req, resp, stream) in methods.items():
            make: Callable = channel.unary_stream if stream else channel.unary_unary
            setattr(self, name, make(f"/{service}/{name}", request_serializer=req.SerializeToString,
                                     response_deserializer=resp.FromString))


class DevicePluginStub(_Stub):
    """Calls a device plugin (what the kubelet does): ``stub.Allocate(request, timeout=5)``."""

    def __init__(self, channel: grpc.Channel) -> None:
        super().__init__(channel, DEVICE_PLUGIN, DEVICE_PLUGIN_METHODS)


class RegistrationStub(_Stub):
    """Calls the kubelet's registration service: ``stub.Register(request, timeout=5)``."""

    def __init__(self, channel: grpc.Channel) -> None:
        super().__init__(channel, REGISTRATION, REGISTRATION_METHODS)


def unix_target(path: str) -> str:
    """The gRPC address of a unix socket path."""
    return f"unix://{path}"
