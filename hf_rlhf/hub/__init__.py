"""The Hub: every stage input may be a Hub repo, and every finished stage may be pushed.

- `hf_rlhf.hub.resolve`: the one `org/name[@revision]` parser (`parse_hub_id`), and `resolve_input`: a local path or
  a Hub id as a `ResolvedInput` (local directory, repo id, revision, exact commit).
- `hf_rlhf.hub.push`: `push_request` (checked before training), `push_stage` / `push_dataset`, `hf-rlhf push`.
- `hf_rlhf.hub.cards`: the model and dataset cards.
- `hf_rlhf.hub.publish`: the pipeline's Hub steps (a recipe's `hub:` section).

The unmodified `huggingface_hub` client does the transfers, so its settings apply: `HF_ENDPOINT`, `HF_HOME` /
`HF_HUB_CACHE`, `HF_HUB_OFFLINE`, and the token from `HF_TOKEN` or `hf auth login`. A token is never printed, logged,
or written to a manifest, card, config dump or error message.
"""
