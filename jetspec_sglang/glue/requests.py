"""Per-request features the JETSPEC worker cannot serve losslessly in SGLang 0.5.23, refused with a clear message.

Called from the validate_dflash_request hook (scheduler.py:3144): the request is aborted with the message and
the server keeps serving. Everything not listed here is served and equals plain decoding (greedy) or follows the
target distribution (sampling).
"""
from __future__ import annotations


def unsupported_reason(req) -> str | None:
    params = req.sampling_params
    if float(getattr(params, "min_p", 0.0) or 0.0) > 0.0:
        return ("JETSPEC: min_p is not applied by SGLang's tree verification (eagle_sample), so the output would "
                "not follow the requested distribution; send the request without min_p")
    for name, neutral in (("frequency_penalty", 0.0), ("presence_penalty", 0.0), ("repetition_penalty", 1.0)):
        value = getattr(params, name, neutral)
        if value is not None and float(value) != neutral:
            return (f"JETSPEC: {name}={value} is not supported (the dflash-family decode path does not accumulate "
                    f"penalty state in SGLang 0.5.23); send the request without {name}")
    if getattr(req, "custom_logit_processor", None):
        return "JETSPEC: custom_logit_processor is not applied in tree verification; omit it"
    return None
