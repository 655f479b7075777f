"""Regenerate ``deviceplugin_pb2.py`` from ``deviceplugin.proto`` (a developer's tool; the
generated module is committed so that installing flexai needs no protobuf compiler).

    python -m flexai.k8s.protogen            # rewrite flexai/k8s/deviceplugin_pb2.py
    python -m flexai.k8s.protogen --check    # exit 1 when the committed module is stale

Needs ``grpcio-tools`` (in the ``test`` extra). ``tests/test_k8s_proto.py`` checks that the
committed module describes exactly the messages the ``.proto`` declares. This module must never
be imported by the components themselves.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
PROTO = HERE / "deviceplugin.proto"
MODULE = HERE / "deviceplugin_pb2.py"


def generate(proto: Path = PROTO) -> str:
    """The module text: a two-line header, then what ``protoc --python_out`` writes for
    ``proto`` (registered as
    ``flexai/k8s/deviceplugin.proto``, so it never collides with another program's
    ``api.proto``).

    Raises
    ------
    RuntimeError
        When the compiler fails.
    """
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        dst = root / "flexai" / "k8s"
        dst.mkdir(parents=True)
        (dst / PROTO.name).write_bytes(proto.read_bytes())
        rc = protoc.main(["protoc", f"-I{root}", f"--python_out={root}",
                          f"flexai/k8s/{PROTO.name}"])
        if rc != 0:
            raise RuntimeError(f"protoc failed ({rc}) on {proto}")
        head = ("# ruff: noqa\n# Written by `python -m flexai.k8s.protogen` from "
                "deviceplugin.proto with grpcio-tools' protoc; never edit by hand.\n")
        return head + (dst / "deviceplugin_pb2.py").read_text()


def main(argv: "list[str] | None" = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flexai.k8s.protogen", description=__doc__)
    p.add_argument("--check", action="store_true", help="only say whether the module is stale")
    args = p.parse_args(argv)
    text = generate()
    if args.check:
        stale = MODULE.read_text() != text
        print(f"{MODULE}: {'stale' if stale else 'up to date'}")
        return int(stale)
    MODULE.write_text(text)
    print(f"wrote {MODULE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
