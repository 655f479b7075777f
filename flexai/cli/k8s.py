"""``flexai k8s device-plugin|extender|webhook|manifests``: the Kubernetes components as
long-running commands (each runs until SIGTERM or Ctrl-C, then exits 0) and the manifests.

Thin: options are parsed and checked here, the work is in :mod:`flexai.k8s`. Logs go to stderr;
only ``manifests`` writes to stdout. Commands return their exit status, never ``sys.exit``.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from ._output import EXIT_BAD_VALUE, EXIT_FAILURE, error


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _api(url: str | None, required: bool):
    """The API client: ``url``, else in-cluster, else None (an error when ``required``)."""
    from ..k8s.kubeapi import KubeApi

    if url:
        return KubeApi(url)
    try:
        return KubeApi.in_cluster()
    except ValueError:
        if required:
            raise
        return None


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen {text!r} is not HOST:PORT (e.g. --listen 127.0.0.1:8888)")
    return host or "0.0.0.0", int(port)


def _serve(server, stop: threading.Event) -> int:
    server.start()
    stop.wait()
    server.shutdown()
    server.server_close()
    return 0


def _device_plugin(args: argparse.Namespace) -> int:
    stop = _stop_on_signals()  # first: a SIGTERM during start-up still ends it cleanly
    from .. import lib_dir
    from ..k8s.allocate import Layout, prepare_host
    from ..k8s.gpus import Nvml
    from ..k8s.plugin import DevicePlugin, PluginConfig

    layout = Layout(args.host_lib_dir, args.container_lib_dir, args.host_state_dir,
                    args.container_state_dir, args.preload)
    if args.replicas < 1:
        raise ValueError(f"--replicas {args.replicas}: at least 1 (e.g. --replicas 10)")
    node = args.node_name or os.environ.get("NODE_NAME", "")
    api = _api(args.kube_api, required=False)
    if api is not None and not node:
        raise ValueError("--node-name is needed to annotate the node (e.g. --node-name "
                         "$NODE_NAME from the downward API)")
    prepare_host(layout, lib_dir() / "libflexai.so" if args.install_lib else None)
    nvml = Nvml()
    config = PluginConfig(plugin_dir=args.plugin_dir, socket_name=args.socket,
                          replicas=args.replicas, node_name=node, layout=layout,
                          health_interval=args.health_interval,
                          watch_interval=args.watch_interval, pod_wait=args.pod_wait)
    plugin = DevicePlugin(config, nvml, api)
    if not plugin.gpus:
        logging.getLogger("flexai.k8s.plugin").warning(
            "no GPU found (%s): advertising none", nvml.error or "NVML shows no device")
    try:
        plugin.run(stop)
    finally:
        nvml.close()
    return 0


def _extender(args: argparse.Namespace) -> int:
    stop = _stop_on_signals()  # first: a SIGTERM during start-up still ends it cleanly
    from ..k8s.cluster import Cluster
    from ..k8s.extender import Extender

    host, port = _address(args.listen)
    # many connection threads share one interpreter: hand the GIL over after 1 ms instead of
    # Python's 5 ms, so a short filter does not wait behind another thread's work
    sys.setswitchinterval(0.001)
    ext = Extender(Cluster(args.policy), _api(args.kube_api, required=False),
                   scheduler_name=args.scheduler_name)
    if ext.api is not None:
        threading.Thread(target=ext.resync_loop, args=(stop, args.resync), daemon=True,
                         name="flexai-resync").start()
    else:
        logging.getLogger("flexai.k8s.extender").warning(
            "no API server: node-cache mode and bind are unavailable (full Nodes only)")
    return _serve(ext.server(host, port, args.prefix), stop)


def _webhook(args: argparse.Namespace) -> int:
    stop = _stop_on_signals()  # first: a SIGTERM during start-up still ends it cleanly
    from ..k8s.webhook import server

    host, port = _address(args.listen)
    if bool(args.cert) != bool(args.key):
        raise ValueError("--cert and --key go together (e.g. --cert tls.crt --key tls.key)")
    return _serve(server(host, port, args.scheduler_name, args.cert, args.key), stop)


def _manifests(args: argparse.Namespace) -> int:
    from ..k8s.manifests import render

    text = render(namespace=args.namespace, image=args.image,
                  scheduler_image=args.scheduler_image, scheduler_name=args.scheduler_name)
    if args.output and args.output != "-":
        with open(args.output, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    # light imports only: every `flexai` command builds this parser (no gRPC, no numpy)
    from ..k8s.allocate import PRELOAD_MODES, Layout
    from ..k8s.manifests import DEFAULTS
    from ..k8s.resources import DEFAULT_SCHEDULER, PLUGIN_DIR

    p = sub.add_parser("k8s", help="Kubernetes: device plugin, scheduler extender, webhook, "
                       "manifests", description="flexai's Kubernetes components.")
    ks = p.add_subparsers(dest="k8s_command", metavar="COMPONENT")
    d = Layout()
    dp = ks.add_parser("device-plugin", help="the kubelet device plugin (DaemonSet)")
    dp.add_argument("--plugin-dir", default=PLUGIN_DIR, help="the kubelet's plugin directory")
    dp.add_argument("--socket", default="flexai-gpu.sock", help="our socket's name there")
    dp.add_argument("--replicas", type=int, default=10, help="devices advertised per GPU "
                    "(how many pods may share one; default 10)")
    dp.add_argument("--node-name", default="", help="this node (default $NODE_NAME)")
    dp.add_argument("--kube-api", default=None, help="API server URL (default: in-cluster)")
    dp.add_argument("--host-lib-dir", default=d.host_lib_dir)
    dp.add_argument("--container-lib-dir", default=d.container_lib_dir)
    dp.add_argument("--host-state-dir", default=d.host_state_dir)
    dp.add_argument("--container-state-dir", default=d.container_state_dir)
    dp.add_argument("--preload", choices=PRELOAD_MODES, default=d.preload,
                    help="ld.so.preload file mount, LD_PRELOAD, or both (default file)")
    dp.add_argument("--install-lib", action="store_true",
                    help="copy this package's libflexai.so into --host-lib-dir at start")
    dp.add_argument("--health-interval", type=float, default=5.0, help="seconds between NVML "
                    "health checks")
    dp.add_argument("--watch-interval", type=float, default=1.0, help="seconds between checks "
                    "for a restarted kubelet")
    dp.add_argument("--pod-wait", type=float, default=5.0, help="seconds Allocate waits for "
                    "the pod's allocation annotation to show")
    dp.add_argument("--log-level", default="info", choices=("debug", "info", "warning",
                                                             "error"))
    dp.set_defaults(k8s_func=_device_plugin)

    ex = ks.add_parser("extender", help="the kube-scheduler extender (filter/prioritize/bind)")
    ex.add_argument("--listen", default="127.0.0.1:8888", help="HOST:PORT")
    ex.add_argument("--prefix", default="", help="URL path prefix of the verbs")
    ex.add_argument("--policy", default="flexai", help="a flexai.policy name (default flexai; "
                    "also fgd, best-fit, first-fit, ...)")
    ex.add_argument("--kube-api", default=None, help="API server URL (default: in-cluster)")
    ex.add_argument("--scheduler-name", default=DEFAULT_SCHEDULER,
                    help="the scheduler profile whose bound pods resync reads back")
    ex.add_argument("--resync", type=float, default=10.0, help="seconds between full resyncs "
                    "of nodes and placed pods")
    ex.add_argument("--log-level", default="info", choices=("debug", "info", "warning",
                                                             "error"))
    ex.set_defaults(k8s_func=_extender)

    wh = ks.add_parser("webhook", help="the admission webhook (AdmissionReview v1)")
    wh.add_argument("--listen", default="0.0.0.0:8443", help="HOST:PORT")
    wh.add_argument("--cert", default=None, help="TLS certificate (PEM); plain HTTP without")
    wh.add_argument("--key", default=None, help="TLS key (PEM)")
    wh.add_argument("--scheduler-name", default=DEFAULT_SCHEDULER)
    wh.add_argument("--log-level", default="info", choices=("debug", "info", "warning",
                                                             "error"))
    wh.set_defaults(k8s_func=_webhook)

    mf = ks.add_parser("manifests", help="print the YAML that installs flexai on a cluster")
    for key, value in DEFAULTS.items():
        mf.add_argument("--" + key.replace("_", "-"), default=value)
    mf.add_argument("-o", "--output", default="-", help="file to write (default stdout)")
    mf.set_defaults(k8s_func=_manifests, log_level="warning")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    if not hasattr(args, "k8s_func"):
        return error("k8s: name a component (e.g. flexai k8s device-plugin)", EXIT_BAD_VALUE)
    _logging(args.log_level)
    try:
        return int(args.k8s_func(args))
    except ValueError as exc:
        return error(exc, EXIT_BAD_VALUE)
    except OSError as exc:
        return error(exc, EXIT_FAILURE)
