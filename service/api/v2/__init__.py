"""The Open Inference Protocol v2 surface (KServe v2 REST / Triton), with Triton's sequence and
binary-tensor extensions: `router` (HTTP), `protocol` (messages, tensor names, parameters),
`binary` (tensor codec), `serving` (tensors <-> engine), `sequences` (sequences = sessions)."""
