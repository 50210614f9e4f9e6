"""The operator: kopf handlers, the only Kubernetes API writer, status and events.

The only package that imports kopf. Drives spec -> fetch -> validate -> render -> apply.
"""
