"""Fixtures of the operator tests: `kanal operator` processes, kopf's peering CRDs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from opkit import PEERING_CRD, Operators

from harness import ControlPlane, Kube


@pytest.fixture
def operators(
    kube: Kube, tmp_path: Path, crds_installed: list[str], knative_crd_installed: list[str]
) -> Iterator[Operators]:
    ops = Operators(kube, tmp_path)
    try:
        yield ops
    finally:
        ops.stop_all()


@pytest.fixture(scope="session")
def peering_crd_installed(control_plane: ControlPlane) -> list[str]:
    """kopf's KopfPeering / ClusterKopfPeering CRDs, from the file the operator ships."""
    return control_plane.apply_crds([PEERING_CRD], restart_controllers=False)
