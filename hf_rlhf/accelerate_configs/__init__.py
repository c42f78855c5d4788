"""The named accelerate configs (`--accelerate_config NAME`): YAML files shipped as package data, read by
`hf_rlhf.launching`."""
