{{/* Chart name. */}}
{{- define "kanal.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name prefix: the release name, or <release>-<chart> when it does not contain the chart name. */}}
{{- define "kanal.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "kanal.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "kanal.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kanal
{{- end -}}

{{/* Selector labels of one component: include "kanal.selectorLabels" (list . "gateway") */}}
{{- define "kanal.selectorLabels" -}}
{{- $ctx := index . 0 -}}
app.kubernetes.io/name: {{ include "kanal.name" $ctx }}
app.kubernetes.io/instance: {{ $ctx.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "kanal.componentLabels" -}}
{{ include "kanal.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "kanal.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "kanal.operator.fullname" -}}{{ include "kanal.fullname" . }}-operator{{- end -}}
{{- define "kanal.gateway.fullname" -}}{{ include "kanal.fullname" . }}-gateway{{- end -}}
{{- define "kanal.redis.fullname" -}}{{ include "kanal.fullname" . }}-redis{{- end -}}

{{- define "kanal.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (include "kanal.operator.fullname" .) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kanal.gateway.serviceAccountName" -}}
{{- if .Values.gateway.serviceAccount.create -}}
{{- default (include "kanal.gateway.fullname" .) .Values.gateway.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.gateway.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The gateway's gRPC address in the cluster (handed to prompt functions). */}}
{{- define "kanal.gateway.grpcAddress" -}}
{{- printf "%s.%s.svc.cluster.local:%d" (include "kanal.gateway.fullname" .) .Release.Namespace (int .Values.gateway.grpcPort) -}}
{{- end -}}

{{/* Secret (name, key) holding the Redis URL; empty name with the bundled Redis. */}}
{{- define "kanal.redis.secretName" -}}
{{- if .Values.redis.enabled -}}
{{- else if .Values.redis.external.existingSecret -}}
{{- .Values.redis.external.existingSecret -}}
{{- else -}}
{{- include "kanal.fullname" . }}-redis-url
{{- end -}}
{{- end -}}

{{/* Cross-field checks the schema cannot express. */}}
{{- define "kanal.validate" -}}
{{- if and (not .Values.redis.enabled) (not .Values.redis.external.url) (not .Values.redis.external.existingSecret) -}}
{{- fail "redis.enabled is false: set redis.external.url or redis.external.existingSecret" -}}
{{- end -}}
{{- if and .Values.redis.enabled (or .Values.redis.external.url .Values.redis.external.existingSecret) -}}
{{- fail "redis.external.* is set but redis.enabled is true: set redis.enabled=false to use an external Redis" -}}
{{- end -}}
{{- $as := .Values.gateway.autoscaling -}}
{{- if and $as.enabled (gt (int $as.minReplicas) (int $as.maxReplicas)) -}}
{{- fail (printf "gateway.autoscaling.minReplicas (%d) must not exceed maxReplicas (%d)" (int $as.minReplicas) (int $as.maxReplicas)) -}}
{{- end -}}
{{- if and $as.enabled (not $as.targetCPUUtilizationPercentage) (not $as.targetMemoryUtilizationPercentage) -}}
{{- fail "gateway.autoscaling.enabled needs targetCPUUtilizationPercentage or targetMemoryUtilizationPercentage" -}}
{{- end -}}
{{- $pdb := .Values.gateway.podDisruptionBudget -}}
{{- if and $pdb.enabled (eq (kindIs "invalid" $pdb.minAvailable) (kindIs "invalid" $pdb.maxUnavailable)) -}}
{{- fail "gateway.podDisruptionBudget: set exactly one of minAvailable and maxUnavailable (the other null)" -}}
{{- end -}}
{{- if eq (int .Values.gateway.httpPort) (int .Values.gateway.grpcPort) -}}
{{- fail "gateway.httpPort and gateway.grpcPort must differ" -}}
{{- end -}}
{{- if eq (int .Values.operator.snapshotPort) (int .Values.operator.healthPort) -}}
{{- fail "operator.snapshotPort and operator.healthPort must differ" -}}
{{- end -}}
{{- end -}}
