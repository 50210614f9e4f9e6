"""The differential HTTP/1.1 suite: the same raw bytes through Envoy 1.40 and through meshplug's agent, same
plugins, same scripted upstream; what the upstream received and what the client got, compared (see bed.py)."""
