"""The shape of each upstream protocol (RECGUARD_UPSTREAM_PROTOCOL)."""

from __future__ import annotations

from proxy.oip_inputs import parse_inputs
from proxy.settings import LimitSettings, UpstreamSettings
from proxy.shapes.base import Shape
from proxy.shapes.kserve import KServeV1Shape
from proxy.shapes.oip import OipV2Shape
from proxy.shapes.plain import PlainShape
from proxy.words import KSERVE_V1, OIP_V2


def make_shape(upstream: UpstreamSettings, limits: LimitSettings, model_name: str) -> Shape:
    """The shape the settings name (upstream_protocol) with their pointers and limits."""
    if upstream.protocol == KSERVE_V1:
        return KServeV1Shape(upstream, limits)
    if upstream.protocol == OIP_V2:
        return oip_shape(upstream, limits, model_name)
    return PlainShape(upstream, limits)


def oip_shape(upstream: UpstreamSettings, limits: LimitSettings, model_name: str) -> OipV2Shape:
    """The OIP v2 shape with the settings' input map and output names (recguard's /v2 endpoints and an
    oip-v2 upstream speak the same)."""
    return OipV2Shape(limits, model_name, parse_inputs(upstream.oip_inputs), upstream.oip_items_output,
                      upstream.oip_scores_output)
