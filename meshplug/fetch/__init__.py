"""Module supply: https/http, oci and file sources, sha256 verification, SSRF guard, content cache.

Called by the operator (controller) and the agent's loader; imports nothing from the rest of meshplug
except `errors` and `limits`. Output: an Artifact (bytes, sha256, source).
"""
