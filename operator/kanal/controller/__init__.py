"""The Kubernetes operator: thin kopf handlers over pure builders, one snapshot sync.

Layout:

- ``builders``: ModelBackend / LlmRoute -> Knative Service manifests (pure), the owned-field
  comparison that keeps Knative's defaulting from causing update loops, Knative readiness.
- ``conditions`` and ``status``: the desired ``status`` of every object (pure).
- ``index``: what the operator remembers of each watched object (pure parsing).
- ``sync``: the one loop that compiles the snapshot, persists and publishes it, and writes
  every status (the only status writer).
- ``reconcile``: creates, patches and deletes Knative Services (idempotent).
- ``handlers``: the kopf registrations, thin.
- ``runner``: kopf settings and ``kanal operator``.
- ``publisher``: the interface the snapshot distribution (gRPC) implements.

It never imports ``kanal.gateway``.
"""
