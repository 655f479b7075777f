"""flexai on Kubernetes: the node's device plugin, the scheduler extender, the admission webhook
and the manifests that install them (``flexai k8s device-plugin|extender|webhook|manifests``).

Modules:

- ``resources``: the contract between the three (resource names, annotations, a pod's request
  as a :class:`flexai.policy.Request`, a node's GPUs); pure, no I/O.
- ``deviceplugin.proto`` / ``deviceplugin_pb2`` / ``dpapi``: the kubelet's device plugin API
  v1beta1 (our own ``.proto``, its generated messages, the gRPC services bound by hand);
  ``protogen`` regenerates the messages.
- ``gpus``: the node's GPUs and their health from NVML.
- ``kubeapi``: the few Kubernetes API calls the components make (plain HTTPS, no client
  library).
- ``plugin`` and ``allocate``: the device plugin (registration, ListAndWatch, Allocate).
- ``cluster`` and ``extender``: the scheduler extender (filter, prioritize, bind) deciding with
  :mod:`flexai.policy`.
- ``webhook``: the admission webhook (AdmissionReview v1, JSON patch).
- ``manifests``: the YAML that installs everything.
- ``httpserve``: the HTTP(S) server the extender and the webhook share.

Importing this package imports nothing heavy (gRPC and NVML load only in the modules that need
them). Nothing here may preload libflexai.so into its own process or call ``sys.exit``.
"""
from __future__ import annotations
