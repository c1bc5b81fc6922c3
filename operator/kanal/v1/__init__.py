"""Generated gRPC code of proto/kanal/v1 (``kanal.v1``): do not edit the ``*_pb2*`` files.

Regenerate with ``.venv/bin/python hack/gen_proto.py``; tests/unit/test_proto_drift.py
fails when they differ from the .proto files.
"""
