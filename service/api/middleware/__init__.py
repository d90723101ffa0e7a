"""The ASGI middlewares, outermost first: `observe` (request id, metrics, access log), `auth` (API
keys; sets the owner), `limits` (body size, timeouts, stalled clients, stream caps). Each decides
by path only through the surface registry (`service/api/surfaces.py`): error shapes, stream routes,
open paths."""
