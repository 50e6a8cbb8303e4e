{{- define "ferrollama.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ferrollama.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "ferrollama.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ferrollama.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "ferrollama.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "ferrollama.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "ferrollama.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ferrollama.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret holding the API key: the user's, or the one this chart makes. */}}
{{- define "ferrollama.apiKeySecretName" -}}
{{- default (printf "%s-api-key" (include "ferrollama.fullname" .)) .Values.apiKey.existingSecret }}
{{- end }}

{{- define "ferrollama.sharedClaimName" -}}
{{- default (printf "%s-models" (include "ferrollama.fullname" .)) .Values.modelStore.shared.existingClaim }}
{{- end }}

{{/* The kubelet's grace period: explicit, or preStop + drain + 15 s. */}}
{{- define "ferrollama.terminationGracePeriodSeconds" -}}
{{- $floor := add (int .Values.preStopSleepSeconds) (int .Values.drainTimeoutSeconds) }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $floor 15 }}
{{- else if eq (toString .Values.terminationGracePeriodSeconds) "" }}
{{- add $floor 15 }}
{{- else }}
{{- int .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/* Values that would make a broken release: refused at render time. */}}
{{- define "ferrollama.validate" -}}
{{- $drain := int .Values.drainTimeoutSeconds }}
{{- $preStop := int .Values.preStopSleepSeconds }}
{{- $grace := int (include "ferrollama.terminationGracePeriodSeconds" .) }}
{{- if lt $drain 0 }}
{{- fail "drainTimeoutSeconds must not be negative" }}
{{- end }}
{{- if lt $preStop 0 }}
{{- fail "preStopSleepSeconds must not be negative" }}
{{- end }}
{{- if le $grace (add $drain $preStop) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be above preStopSleepSeconds + drainTimeoutSeconds (%d + %d): the kubelet would kill the server in the middle of its drain" $grace $preStop $drain) }}
{{- end }}
{{- if not .Values.model.name }}
{{- fail "model.name is required: the model the server loads (FERROLLAMA_MODEL)" }}
{{- end }}
{{- if and .Values.model.sha256 (not (regexMatch "^[0-9a-f]{64}$" (toString .Values.model.sha256))) }}
{{- fail "model.sha256 must be 64 lowercase hex digits (the model layer's sha256)" }}
{{- end }}
{{- if lt (int .Values.gpu.count) 1 }}
{{- fail "gpu.count must be at least 1: the image is a CUDA build" }}
{{- end }}
{{- if not (has .Values.modelStore.type (list "perPod" "shared")) }}
{{- fail (printf "modelStore.type must be perPod or shared, not %q" (toString .Values.modelStore.type)) }}
{{- end }}
{{- $several := or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1) }}
{{- if and (eq .Values.modelStore.type "shared") (not .Values.modelStore.shared.existingClaim) $several (ne .Values.modelStore.shared.accessMode "ReadWriteMany") }}
{{- fail (printf "modelStore.shared.accessMode %s cannot be mounted by several replicas: use ReadWriteMany, modelStore.type perPod, or one replica" .Values.modelStore.shared.accessMode) }}
{{- end }}
{{- if and .Values.apiKey.enabled (not .Values.apiKey.existingSecret) (not .Values.apiKey.value) }}
{{- fail "apiKey.enabled needs apiKey.existingSecret or apiKey.value" }}
{{- end }}
{{- range $name := list "OLLAMA_HOST" "OLLAMA_MODELS" "HF_HOME" "FERROLLAMA_MODEL" "FERROLLAMA_DRAIN_TIMEOUT" "FERROLLAMA_API_KEY" "FERROLLAMA_READ_ONLY" }}
{{- if hasKey $.Values.env $name }}
{{- fail (printf "env.%s: the chart sets it (see values.yaml: model, modelStore, drainTimeoutSeconds, apiKey, readOnly)" $name) }}
{{- end }}
{{- end }}
{{- if .Values.autoscaling.enabled }}
{{- if gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas) }}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- if lt (int .Values.autoscaling.minReplicas) 1 }}
{{- fail "autoscaling.minReplicas must be at least 1" }}
{{- end }}
{{- end }}
{{- end }}

{{/* One probe handler: GET on the port, or, with an API key, curl inside the container
     carrying the key (httpGet headers would put the key in the pod spec). */}}
{{- define "ferrollama.probeHandler" -}}
{{- if .root.Values.apiKey.enabled -}}
exec:
  command:
    - sh
    - -c
    - {{ printf "curl -fsS -o /dev/null -m %d -H \"Authorization: Bearer $FERROLLAMA_API_KEY\" http://127.0.0.1:11434%s" (max 1 (sub (int .probe.timeoutSeconds) 1)) .path | quote }}
{{- else -}}
httpGet:
  path: {{ .path }}
  port: http
{{- end }}
periodSeconds: {{ .probe.periodSeconds }}
timeoutSeconds: {{ .probe.timeoutSeconds }}
failureThreshold: {{ .probe.failureThreshold }}
{{- end }}

{{/* Environment shared by the pull and the server. */}}
{{- define "ferrollama.storeEnv" -}}
- name: OLLAMA_MODELS
  value: {{ .Values.modelStore.mountPath | quote }}
- name: HF_HOME
  value: {{ printf "%s/huggingface" .Values.modelStore.mountPath | quote }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* .resources with the GPU added to requests and limits; called with dict "root" "resources". */}}
{{- define "ferrollama.gpuResources" -}}
{{- $gpu := dict .root.Values.gpu.resourceName (int .root.Values.gpu.count) }}
{{- $r := deepCopy (default dict .resources) }}
{{- $_ := set $r "requests" (merge (deepCopy (default dict $r.requests)) $gpu) }}
{{- $_ := set $r "limits" (merge (deepCopy (default dict $r.limits)) $gpu) }}
{{- toYaml $r }}
{{- end }}
