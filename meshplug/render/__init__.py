"""Pure rendering: (PluginSpec, Artifact, ModuleInfo) -> Kubernetes objects and patches.

EnvoyFilters, ConfigMaps, pod-template annotations and agent push payloads. No I/O, no API calls.
"""
