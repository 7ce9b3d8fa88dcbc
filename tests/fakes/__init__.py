"""Fakes used only by this project's own tests (plugin authors get theirs from
:mod:`gateway.testing`): the protocol-faithful fake vLLM (:mod:`.vllm`, its bodies in
:mod:`.vllm_protocol`, its ``/metrics`` in :mod:`.vllm_metrics`) and the comparator that
checks it against a real ``vllm serve`` (:mod:`.vllm_diff`)."""
