{{/* Names and labels shared by every template. */}}
{{- define "meshplug.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "meshplug.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "meshplug.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "meshplug.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "meshplug.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "meshplug.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: meshplug
{{- end -}}

{{- define "meshplug.selectorLabels" -}}
app.kubernetes.io/name: {{ include "meshplug.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "meshplug.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (printf "%s-operator" (include "meshplug.fullname" .)) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create=false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "meshplug.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "meshplug.webhookSecretName" -}}
{{- default (printf "%s-webhook-tls" (include "meshplug.fullname" .)) .Values.webhook.tls.secretName -}}
{{- end -}}

{{- define "meshplug.webhookServiceName" -}}
{{- printf "%s-webhook" (include "meshplug.fullname" .) -}}
{{- end -}}

{{- define "meshplug.modulesServiceName" -}}
{{- printf "%s-modules" (include "meshplug.fullname" .) -}}
{{- end -}}

{{/* The webhook config file the operator reads ($MESHPLUG_WEBHOOK_CONFIG; format: meshplug/controller/webhooks.py). */}}
{{- define "meshplug.webhookConfig" -}}
listen:
  address: 0.0.0.0
  port: {{ .Values.webhook.port }}
tls:
  {{- if eq .Values.webhook.tls.mode "operator" }}
  {{- include "meshplug.webhookIssue" . | nindent 2 }}
  caBundle:
    {{- with (include "meshplug.caBundleTargets" . | fromYaml) }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- else }}
  certFile: /etc/meshplug/webhook-tls/tls.crt
  keyFile: /etc/meshplug/webhook-tls/tls.key
  {{- end }}
istioModules:
  enabled: {{ .Values.istio.moduleMounts.enabled }}
injection:
  enabled: {{ .Values.injection.enabled }}
  agent:
    image: {{ default (include "meshplug.image" .) .Values.agent.image | quote }}
    imagePullPolicy: {{ .Values.image.pullPolicy }}
    listenPort: {{ .Values.agent.listenPort }}
    adminPort: {{ .Values.agent.adminPort }}
    pushPort: {{ .Values.agent.pushPort }}
    secretName: {{ .Values.agent.secretName | quote }}
    moduleServerUrl: {{ printf "https://%s.%s.svc:%d" (include "meshplug.modulesServiceName" .) .Release.Namespace (int .Values.operator.moduleTlsPort) | quote }}
    tokenAudience: {{ .Values.agent.tokenAudience | quote }}
    tokenExpirationSeconds: {{ .Values.agent.tokenExpirationSeconds }}
    allowLoopback: {{ .Values.ssrf.allowLoopback }}
    blockCIDRs:
      {{- toYaml .Values.ssrf.blockCIDRs | nindent 6 }}
    runAsUser: {{ .Values.agent.runAsUser }}
    logLevel: {{ .Values.agent.logLevel }}
    requireSignatures: {{ .Values.agent.requireSignatures }}
    resources:
      {{- toYaml .Values.agent.resources | nindent 6 }}
validation:
  enabled: {{ .Values.validation.enabled }}
  allowedUrlPrefixes:
    {{- toYaml .Values.validation.allowedUrlPrefixes | nindent 4 }}
{{- end -}}

{{/* With watchNamespaces: the namespaceSelector expression that keeps the webhooks to those namespaces. */}}
{{- define "meshplug.watchedNamespacesExpression" -}}
{{- with .Values.watchNamespaces }}
- key: kubernetes.io/metadata.name
  operator: In
  values:
    {{- toYaml (. | uniq) | nindent 4 }}
{{- end }}
{{- end -}}

{{/* tls.mode=operator: the names the operator's serving certificate carries (the Service's, or webhook.url's host). */}}
{{- define "meshplug.webhookIssue" -}}
{{- $dns := list }}
{{- $ips := list }}
{{- if .Values.webhook.url }}
{{- $host := (urlParse .Values.webhook.url).hostname }}
{{- if regexMatch "^[0-9.]+$|:" $host }}
{{- $ips = append $ips $host }}
{{- else }}
{{- $dns = append $dns $host }}
{{- end }}
{{- else }}
{{- $svc := include "meshplug.webhookServiceName" . }}
{{- $dns = list $svc (printf "%s.%s" $svc .Release.Namespace) (printf "%s.%s.svc" $svc .Release.Namespace) (printf "%s.%s.svc.cluster.local" $svc .Release.Namespace) }}
{{- end -}}
issue:
  dnsNames: {{ toJson $dns }}
  ipAddresses: {{ toJson $ips }}
{{- end -}}

{{/* tls.mode=operator: the webhook configurations whose caBundle the operator keeps, by RBAC resource (RBAC grants
get,patch on exactly these: templates/rbac.yaml). */}}
{{- define "meshplug.caBundleTargets" -}}
{{- if and .Values.webhook.enabled (eq .Values.webhook.tls.mode "operator") }}
{{- $mutating := list }}
{{- if .Values.injection.enabled }}
{{- $mutating = append $mutating (printf "%s-inject" (include "meshplug.fullname" .)) }}
{{- end }}
{{- if .Values.istio.moduleMounts.enabled }}
{{- $mutating = append $mutating (printf "%s-istio-modules" (include "meshplug.fullname" .)) }}
{{- end }}
{{- with $mutating }}
mutatingWebhookConfigurations: [{{ join ", " . }}]
{{- end }}
{{- if .Values.validation.enabled }}
validatingWebhookConfigurations: [{{ printf "%s-validate" (include "meshplug.fullname" .) }}]
{{- end }}
{{- end }}
{{- end -}}
