"""The device plugin (``flexai k8s device-plugin``): advertises each GPU of the node as
``replicas`` shareable devices of ``flexai.io/gpu`` with their health from NVML, and gives each
container the slice the extender chose for its pod.

Lifecycle, as the kubelet expects it: serve our socket in the plugin directory *before*
``Register`` (the kubelet dials back inside it); version exactly ``v1beta1``; when the kubelet
restarts it deletes every socket there and creates a new ``kubelet.sock``, so we watch for our
socket disappearing (or ``kubelet.sock`` being replaced) and serve and register again.

``Allocate`` receives only device IDs, so the pod is found through the API server: the pods
bound to this node with the extender's ``flexai.io/allocation`` annotation, not yet assigned,
asking for as many devices; the oldest such choice wins (the kubelet admits a node's pods one at
a time). The device IDs the kubelet picked do not matter (every device of a GPU is alike);
``GetPreferredAllocation`` steers it to the chosen GPU's devices anyway.

This module must never preload libflexai.so into its own process, never decide placement (the
extender does), and never answer an empty ``container_responses`` (that fails the pod silently:
an error with the reason is returned instead).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import grpc

from . import deviceplugin_pb2 as pb
from . import dpapi
from .allocate import Layout, container_response
from .gpus import Nvml
from .kubeapi import KubeApi, KubeApiError
from .resources import (
    ANNOTATION_ALLOCATION,
    ANNOTATION_ASSIGNED,
    ANNOTATION_NODE_GPUS,
    RESOURCE_GPU,
    Allocation,
    NodeGpu,
    encode_node_gpus,
    pod_request,
)

log = logging.getLogger("flexai.k8s.plugin")


@dataclass
class PluginConfig:
    """How the plugin runs (the command's options)."""

    plugin_dir: str = dpapi.PLUGIN_DIR
    socket_name: str = "flexai-gpu.sock"
    resource: str = RESOURCE_GPU
    replicas: int = 10
    node_name: str = ""
    layout: Layout = field(default_factory=Layout)
    health_interval: float = 5.0
    watch_interval: float = 1.0
    register_timeout: float = 5.0
    pod_wait: float = 5.0  # how long Allocate looks for the pod's annotation


class DevicePlugin:
    """The ``v1beta1.DevicePlugin`` service and its lifecycle (see the module docstring)."""

    def __init__(self, config: PluginConfig, nvml: Nvml, api: Optional[KubeApi]) -> None:
        if config.replicas < 1:
            raise ValueError(f"replicas must be >= 1, not {config.replicas} (e.g. --replicas 10)")
        self.config = config
        self.nvml = nvml
        self.api = api
        self.gpus: tuple[NodeGpu, ...] = nvml.gpus()
        self.by_uuid = {g.uuid: g for g in self.gpus}
        self.health = {g.uuid: "" for g in self.gpus}
        self._cond = threading.Condition()
        self._version = 0       # bumps on every change of the device list
        self._generation = 0    # bumps when a server is stopped: its streams end
        self._alloc_lock = threading.Lock()
        self._assigned: set[str] = set()
        self.registrations = 0

    # ---- devices -----------------------------------------------------------------------------

    def device_ids(self, gpu: NodeGpu) -> list[str]:
        return [f"{gpu.uuid}-{k}" for k in range(self.config.replicas)]

    def _gpu_of(self, device_id: str) -> Optional[NodeGpu]:
        return self.by_uuid.get(device_id.rsplit("-", 1)[0])

    def _devices(self) -> list[pb.Device]:
        out = []
        for g in self.gpus:
            health = dpapi.UNHEALTHY if self.health.get(g.uuid) else dpapi.HEALTHY
            out.extend(pb.Device(ID=i, health=health) for i in self.device_ids(g))
        return out

    def check_health(self) -> bool:
        """Ask NVML once; True when some GPU's health changed (the streams are told)."""
        now = self.nvml.health([g.uuid for g in self.gpus])
        with self._cond:
            changed = {u for u in now if bool(now[u]) != bool(self.health.get(u))}
            if not changed:
                return False
            self.health = now
            self._version += 1
            self._cond.notify_all()
        for u in sorted(changed):
            log.warning("GPU %s is %s%s", u, "unhealthy: " if now[u] else "healthy again",
                        now[u])
        return True

    def publish(self) -> None:
        """Write the node's GPUs (with health) in the node annotation the extender reads."""
        if self.api is None or not self.config.node_name:
            return
        gpus = [replace(g, healthy=not self.health.get(g.uuid)) for g in self.gpus]
        try:
            self.api.patch_node_annotations(self.config.node_name,
                                            {ANNOTATION_NODE_GPUS: encode_node_gpus(gpus)})
        except KubeApiError as exc:
            log.error("cannot annotate node %s: %s", self.config.node_name, exc)

    # ---- the gRPC service --------------------------------------------------------------------

    def GetDevicePluginOptions(self, request, context):
        return pb.DevicePluginOptions(pre_start_required=False,
                                      get_preferred_allocation_available=True)

    def ListAndWatch(self, request, context):
        generation = self._generation
        seen = -1
        while context.is_active():
            with self._cond:
                if generation != self._generation:
                    return
                if seen == self._version:
                    self._cond.wait(timeout=1.0)
                    continue
                seen, devices = self._version, self._devices()
            yield pb.ListAndWatchResponse(devices=devices)

    def _pending(self, count: int) -> list[tuple[dict, Allocation]]:
        """Pods bound here that the extender placed and no container got yet, asking for
        ``count`` devices; oldest choice first."""
        if self.api is None:
            raise RuntimeError("the device plugin has no API server to read pod annotations from "
                               "(run it in a pod, or pass --kube-api)")
        node = self.config.node_name
        found = []
        for pod in self.api.list_pods(field_selector=f"spec.nodeName={node}"):
            meta = pod.get("metadata") or {}
            ann = meta.get("annotations") or {}
            phase = (pod.get("status") or {}).get("phase")
            if (meta.get("uid") in self._assigned or ann.get(ANNOTATION_ASSIGNED) == "true"
                    or ANNOTATION_ALLOCATION not in ann or meta.get("deletionTimestamp")
                    or phase in ("Succeeded", "Failed")):
                continue
            try:
                alloc = Allocation.from_json(ann[ANNOTATION_ALLOCATION])
                req = pod_request(pod)
            except ValueError as exc:
                log.error("pod %s/%s: %s", meta.get("namespace"), meta.get("name"), exc)
                continue
            if alloc.node == node and req is not None and req.gpus == count:
                found.append((pod, alloc))
        found.sort(key=lambda pa: pa[1].time)
        return found

    def _wait_pending(self, count: int) -> list[tuple[dict, Allocation]]:
        deadline = time.monotonic() + self.config.pod_wait
        while True:
            found = self._pending(count)
            if found or time.monotonic() >= deadline:
                return found
            time.sleep(0.1)

    def GetPreferredAllocation(self, request, context):
        resp = pb.PreferredAllocationResponse()
        for creq in request.container_requests:
            chosen = list(creq.must_include_deviceIDs)
            try:
                found = self._pending(creq.allocation_size)
            except (RuntimeError, KubeApiError) as exc:
                log.warning("preferred allocation without the pod: %s", exc)
                found = []
            wanted = list(found[0][1].uuids) if found else []
            for dev in creq.available_deviceIDs:
                if len(chosen) >= creq.allocation_size:
                    break
                g = self._gpu_of(dev)
                if dev not in chosen and g is not None and g.uuid in wanted:
                    chosen.append(dev)
                    wanted.remove(g.uuid)
            for dev in creq.available_deviceIDs:
                if len(chosen) >= creq.allocation_size:
                    break
                if dev not in chosen:
                    chosen.append(dev)
            resp.container_responses.add(deviceIDs=chosen)
        return resp

    def Allocate(self, request, context):
        resp = pb.AllocateResponse()
        with self._alloc_lock:
            for creq in request.container_requests:
                ids = list(creq.devices_ids)
                unknown = [i for i in ids if self._gpu_of(i) is None]
                if unknown:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                  f"unknown {self.config.resource} device(s) {unknown}")
                try:
                    found = self._wait_pending(len(ids))
                except (RuntimeError, KubeApiError) as exc:
                    context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
                if not found:
                    context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                  f"no pod on node {self.config.node_name!r} waits for "
                                  f"{len(ids)} {self.config.resource} device(s) with the "
                                  f"scheduler's {ANNOTATION_ALLOCATION} annotation (is the pod "
                                  "scheduled by flexai-scheduler?)")
                pod, alloc = found[0]
                try:
                    parts = container_response(alloc, self.config.layout, self.by_uuid)
                except ValueError as exc:
                    context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
                meta = pod["metadata"]
                self._assigned.add(meta.get("uid"))
                try:
                    self.api.patch_pod_metadata(meta["namespace"], meta["name"],
                                                annotations={ANNOTATION_ASSIGNED: "true"})
                except KubeApiError as exc:  # remembered here; the annotation is for people
                    log.error("cannot mark pod %s/%s assigned: %s", meta["namespace"],
                              meta["name"], exc)
                log.info("pod %s/%s: slice %s on %s, %s%% compute", meta["namespace"],
                         meta["name"], alloc.slice, ",".join(alloc.uuids), alloc.compute)
                c = resp.container_responses.add()
                c.envs.update(parts["envs"])
                c.annotations.update(parts["annotations"])
                for cpath, hpath, ro in parts["mounts"]:
                    c.mounts.add(container_path=cpath, host_path=hpath, read_only=ro)
        return resp

    def PreStartContainer(self, request, context):
        return pb.PreStartContainerResponse()

    # ---- lifecycle ---------------------------------------------------------------------------

    @property
    def socket_path(self) -> str:
        return os.path.join(self.config.plugin_dir, self.config.socket_name)

    @property
    def kubelet_path(self) -> str:
        return os.path.join(self.config.plugin_dir, dpapi.KUBELET_SOCKET)

    def _serve(self) -> grpc.Server:
        path = self.socket_path
        if os.path.exists(path):
            os.unlink(path)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        dpapi.add_device_plugin(server, self)
        if not server.add_insecure_port(dpapi.unix_target(path)):
            raise OSError(f"cannot serve on {path}")
        server.start()
        return server

    def _register(self) -> None:
        with grpc.insecure_channel(dpapi.unix_target(self.kubelet_path)) as channel:
            dpapi.RegistrationStub(channel).Register(
                pb.RegisterRequest(version=dpapi.VERSION, endpoint=self.config.socket_name,
                                   resource_name=self.config.resource,
                                   options=self.GetDevicePluginOptions(None, None)),
                timeout=self.config.register_timeout)
        self.registrations += 1

    def _stop_server(self, server: grpc.Server) -> None:
        with self._cond:
            self._generation += 1
            self._cond.notify_all()
        server.stop(grace=0.5).wait(5)

    def _health_loop(self, stop: threading.Event) -> None:
        """Check health; publish the node annotation on a change, and every 5 minutes anyway
        (a node object recreated, or an annotation edited away, is mended)."""
        last = time.monotonic()
        while not stop.wait(self.config.health_interval):
            if self.check_health() or time.monotonic() - last > 300:
                self.publish()
                last = time.monotonic()

    def run(self, stop: threading.Event) -> None:
        """Serve, register and re-register until ``stop`` is set."""
        self.check_health()
        self.publish()
        threading.Thread(target=self._health_loop, args=(stop,), name="flexai-health",
                         daemon=True).start()
        backoff = self.config.watch_interval
        while not stop.is_set():
            try:
                kubelet_id = os.stat(self.kubelet_path).st_ino
            except FileNotFoundError:
                stop.wait(self.config.watch_interval)
                continue
            server = self._serve()
            try:
                self._register()
            except grpc.RpcError as exc:
                log.error("registration with the kubelet failed: %s", exc.details()
                          if hasattr(exc, "details") else exc)
                self._stop_server(server)
                stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            backoff = self.config.watch_interval
            log.info("registered %s: %d GPU(s) x %d devices on %s", self.config.resource,
                     len(self.gpus), self.config.replicas, self.socket_path)
            while not stop.wait(self.config.watch_interval):
                try:
                    same = os.stat(self.kubelet_path).st_ino == kubelet_id
                except FileNotFoundError:
                    same = False
                if not same or not os.path.exists(self.socket_path):
                    log.warning("the kubelet restarted (sockets replaced): registering again")
                    break
            self._stop_server(server)
        if os.path.exists(self.socket_path):
            Path(self.socket_path).unlink(missing_ok=True)
