"""A fake kubelet for the device plugin tests: the ``v1beta1.Registration`` service on
``kubelet.sock`` in a plugin directory, built from flexai's own ``.proto`` (flexai.k8s.dpapi),
behaving as the real kubelet does where the plugin can tell:

- ``Register`` checks the version (exactly ``v1beta1``) and dials the plugin's endpoint *inside*
  the call (``GetDevicePluginOptions``), so a plugin that registers before serving fails;
- after a registration it calls ``ListAndWatch`` and keeps every device list it streams;
- ``restart()`` deletes every socket in the plugin directory and serves a new ``kubelet.sock``,
  as a restarting kubelet does;
- ``allocate()`` / ``preferred()`` call the registered plugin as the kubelet's device manager
  does when it admits a pod.

Test support only: it never starts the plugin itself, and every wait has a timeout.
"""
from __future__ import annotations

import os
import queue
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Callable, Optional

import grpc

from flexai.k8s import deviceplugin_pb2 as pb
from flexai.k8s import dpapi


class FakeKubelet:
    """The kubelet's side of the device plugin protocol (see the module docstring)."""

    def __init__(self, plugin_dir: Path) -> None:
        self.plugin_dir = Path(plugin_dir)
        self.plugin_dir.mkdir(parents=True, exist_ok=True)
        self.registrations: list[pb.RegisterRequest] = []
        self.options: list[pb.DevicePluginOptions] = []
        self.lists: "queue.Queue[list[tuple[str, str]]]" = queue.Queue()
        self.latest: list[tuple[str, str]] = []
        self._server: Optional[grpc.Server] = None
        self._channel: Optional[grpc.Channel] = None
        self._watch: Optional[threading.Thread] = None
        self._lock = threading.Lock()
        self.errors: list[str] = []

    # ---- Registration service --------------------------------------------------------------

    def Register(self, request: pb.RegisterRequest, context) -> pb.Empty:
        if request.version != dpapi.VERSION:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"unsupported device plugin API version {request.version!r}")
        endpoint = self.plugin_dir / request.endpoint
        channel = grpc.insecure_channel(dpapi.unix_target(str(endpoint)))
        stub = dpapi.DevicePluginStub(channel)
        try:
            opts = stub.GetDevicePluginOptions(pb.Empty(), timeout=5)
        except grpc.RpcError as exc:
            channel.close()
            self.errors.append(f"dial back failed: {exc}")
            context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot dial {endpoint}: {exc}")
        with self._lock:
            if self._channel is not None:
                self._channel.close()
            self._channel = channel
            self.registrations.append(request)
            self.options.append(opts)
        self._watch = threading.Thread(target=self._list_and_watch, args=(stub,), daemon=True)
        self._watch.start()
        return pb.Empty()

    def _list_and_watch(self, stub: dpapi.DevicePluginStub) -> None:
        try:
            for resp in stub.ListAndWatch(pb.Empty()):
                devices = [(d.ID, d.health) for d in resp.devices]
                self.latest = devices
                self.lists.put(devices)
        except grpc.RpcError:
            pass  # the plugin went away (restart, stop)

    # ---- lifecycle ---------------------------------------------------------------------------

    @property
    def socket(self) -> Path:
        return self.plugin_dir / dpapi.KUBELET_SOCKET

    def start(self) -> "FakeKubelet":
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        dpapi.add_registration(server, self)
        if self.socket.exists():
            self.socket.unlink()
        server.add_insecure_port(dpapi.unix_target(str(self.socket)))
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=0).wait(5)
            self._server = None
        with self._lock:
            if self._channel is not None:
                self._channel.close()
                self._channel = None

    def restart(self) -> None:
        """Stop, delete every socket in the plugin directory, start on a new kubelet.sock."""
        self.stop()
        for p in self.plugin_dir.iterdir():
            if p.is_socket():
                p.unlink()
        self.start()

    # ---- waiting and calling -----------------------------------------------------------------

    def wait_registered(self, count: int = 1, timeout: float = 15.0) -> pb.RegisterRequest:
        """The ``count``-th registration, waited for."""
        deadline = time.monotonic() + timeout
        while len(self.registrations) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"no registration #{count} within {timeout} s "
                                     f"(errors: {self.errors})")
            time.sleep(0.02)
        return self.registrations[count - 1]

    def wait_devices(self, predicate: Callable[[list], bool],
                     timeout: float = 15.0) -> list[tuple[str, str]]:
        """The first streamed device list (from now on, or the latest) that satisfies
        ``predicate``."""
        if self.latest and predicate(self.latest):
            return self.latest
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching device list within {timeout} s; latest: "
                                     f"{self.latest}")
            try:
                devices = self.lists.get(timeout=left)
            except queue.Empty:
                continue
            if predicate(devices):
                return devices

    def _stub(self) -> dpapi.DevicePluginStub:
        with self._lock:
            if self._channel is None:
                raise AssertionError("no plugin registered")
            return dpapi.DevicePluginStub(self._channel)

    def allocate(self, device_ids: list[str], timeout: float = 15.0) -> pb.AllocateResponse:
        req = pb.AllocateRequest()
        req.container_requests.add(devices_ids=device_ids)
        return self._stub().Allocate(req, timeout=timeout)

    def preferred(self, available: list[str], size: int,
                  timeout: float = 15.0) -> pb.PreferredAllocationResponse:
        req = pb.PreferredAllocationRequest()
        req.container_requests.add(available_deviceIDs=available, allocation_size=size)
        return self._stub().GetPreferredAllocation(req, timeout=timeout)


def wait_path_gone(path: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while os.path.exists(path):
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} still exists after {timeout} s")
        time.sleep(0.02)
