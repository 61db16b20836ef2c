"""Per-request refusals under JETSPEC (HTTP 400 with a message naming the field and the fix; the server keeps serving).

Called from the validate_dflash_request hook (scheduler.py:3144), before the request is queued. Two kinds:
  * inputs SGLang 0.5.23 would crash its scheduler on (plain decoding too): an empty prompt, token ids outside the
    vocabulary, top_logprobs_num above the vocabulary size;
  * features the JETSPEC worker cannot serve losslessly: min_p, penalties, min_new_tokens, custom logit processors;
    and return_sampling_mask, which its decode step never fills.
Everything not listed here is served and equals plain decoding (greedy) or follows the target distribution
(sampling); tests/test_reliability_requests.py checks both lists against a live server.
"""
from __future__ import annotations


def unsupported_reason(req) -> str | None:
    return malformed_reason(req) or feature_reason(req)


def malformed_reason(req) -> str | None:
    """Inputs that kill SGLang 0.5.23's scheduler (an uncaught exception in the forward pass ends the server)."""
    ids = req.origin_input_ids
    if getattr(req, "input_embeds", None) is not None:
        return None
    if len(ids) == 0:
        # Prefill of zero tokens: IndexError in LogitsProcessor._get_pruned_states.
        return ("JETSPEC: the prompt is empty (0 input tokens); send at least one token (the tokenizer adds no "
                "BOS to an empty text)")
    vocab = getattr(req, "vocab_size", None)
    if not vocab:
        return None
    low, high = min(ids), max(ids)
    if low < 0 or high >= vocab:
        # IndexError in the target's embedding lookup: SGLang does not range-check input_ids.
        return (f"JETSPEC: input_ids contains token id {low if low < 0 else high} outside the vocabulary [0, {vocab}); "
                "send ids produced by this model's tokenizer")
    top = int(getattr(getattr(req, "logprob", None), "top_logprobs_num", 0) or 0)
    if getattr(req, "return_logprob", False) and top > vocab:
        # torch.topk(k > V) in the sampler's logprob step.
        return f"JETSPEC: top_logprobs_num={top} exceeds the vocabulary size {vocab}; ask for at most {vocab}"
    return None


def feature_reason(req) -> str | None:
    """Sampling features SGLang 0.5.23's tree verification does not apply (the output would be wrong)."""
    params = req.sampling_params
    if float(getattr(params, "min_p", 0.0) or 0.0) > 0.0:
        return ("JETSPEC: min_p is not applied by SGLang's tree verification (eagle_sample), so the output would "
                "not follow the requested distribution; send the request without min_p")
    for name, neutral in (("frequency_penalty", 0.0), ("presence_penalty", 0.0), ("repetition_penalty", 1.0)):
        value = getattr(params, name, neutral)
        if value is not None and float(value) != neutral:
            return (f"JETSPEC: {name}={value} is not supported (the dflash-family decode path does not accumulate "
                    f"penalty state in SGLang 0.5.23); send the request without {name}")
    min_new = int(getattr(params, "min_new_tokens", 0) or 0)
    if min_new > 0:
        # The min-new-tokens penalizer masks EOS until the output is long enough; the dflash-family decode path
        # never advances its output count, so EOS would stay masked to max_new_tokens (seen: 64 tokens, plain 39).
        return (f"JETSPEC: min_new_tokens={min_new} is not supported (SGLang 0.5.23's dflash-family decode path does "
                "not advance the min_new_tokens penalizer, so EOS would stay masked); send the request without "
                "min_new_tokens (min_tokens in the OpenAI API)")
    if getattr(req, "custom_logit_processor", None):
        return "JETSPEC: custom_logit_processor is not applied in tree verification; omit it"
    if getattr(req, "return_sampling_mask", False):
        # The mask is captured by the sampler of plain decoding (layers/sampler.py); the JETSPEC decode step samples
        # through eagle_sample, which never fills it, so the response would carry no mask.
        return ("JETSPEC: return_sampling_mask is not supported (speculative tree verification does not record the "
                "sampling mask); send the request without return_sampling_mask, or use a server without "
                "--speculative-algorithm")
    return None
