"""The gateway data plane: OpenAI-compatible HTTP and gRPC in front of provider adapters.

It reads only the routing snapshot (``kanal.snapshot``) and never imports the operator.
"""
