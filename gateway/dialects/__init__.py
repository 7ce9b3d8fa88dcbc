"""The wire dialects the gateway speaks to its clients (OpenAI Chat Completions, Anthropic
Messages): sans-I/O objects that know one protocol's bodies, errors, heartbeats and stream
grammar, and translate it to chat for backends that speak only chat. No trio here."""
