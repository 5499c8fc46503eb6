{{/* Names ------------------------------------------------------------------------------- */}}
{{- define "heliograph.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "heliograph.fullname" -}}
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

{{- define "heliograph.edge.fullname" -}}{{ include "heliograph.fullname" . }}-edge{{- end -}}
{{- define "heliograph.coordinator.fullname" -}}{{ include "heliograph.fullname" . }}-coordinator{{- end -}}
{{- define "heliograph.coordinator.headless" -}}{{ include "heliograph.fullname" . }}-coordinator-hl{{- end -}}
{{- define "heliograph.redis.fullname" -}}{{ include "heliograph.fullname" . }}-redis{{- end -}}

{{/* Labels ------------------------------------------------------------------------------ */}}
{{- define "heliograph.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "heliograph.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: heliograph
heliograph.io/region: {{ .Values.region | quote }}
{{- end -}}

{{/* selectorLabels: call with (dict "ctx" . "component" "edge") */}}
{{- define "heliograph.selectorLabels" -}}
app.kubernetes.io/name: {{ include "heliograph.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "heliograph.componentLabels" -}}
{{ include "heliograph.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Image --------------------------------------------------------------------------------- */}}
{{- define "heliograph.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* Secrets ------------------------------------------------------------------------------- */}}
{{- define "heliograph.secretName" -}}{{ include "heliograph.fullname" . }}-secrets{{- end -}}

{{- define "heliograph.clusterSecret.name" -}}
{{- if .Values.clusterSecret.existingSecret -}}{{ .Values.clusterSecret.existingSecret }}{{- else -}}{{ include "heliograph.secretName" . }}{{- end -}}
{{- end -}}
{{- define "heliograph.clusterSecret.key" -}}
{{- if .Values.clusterSecret.existingSecret -}}{{ .Values.clusterSecret.existingSecretKey }}{{- else -}}cluster-secret{{- end -}}
{{- end -}}

{{- define "heliograph.jwt.enabled" -}}
{{- if or .Values.jwt.key .Values.jwt.existingSecret -}}true{{- end -}}
{{- end -}}
{{- define "heliograph.jwt.name" -}}
{{- if .Values.jwt.existingSecret -}}{{ .Values.jwt.existingSecret }}{{- else -}}{{ include "heliograph.secretName" . }}{{- end -}}
{{- end -}}
{{- define "heliograph.jwt.key" -}}
{{- if .Values.jwt.existingSecret -}}{{ .Values.jwt.existingSecretKey }}{{- else -}}jwt-key{{- end -}}
{{- end -}}

{{- define "heliograph.turn.enabled" -}}
{{- if or .Values.turn.secret .Values.turn.existingSecret -}}true{{- end -}}
{{- end -}}
{{- define "heliograph.turn.name" -}}
{{- if .Values.turn.existingSecret -}}{{ .Values.turn.existingSecret }}{{- else -}}{{ include "heliograph.secretName" . }}{{- end -}}
{{- end -}}
{{- define "heliograph.turn.key" -}}
{{- if .Values.turn.existingSecret -}}{{ .Values.turn.existingSecretKey }}{{- else -}}turn-secret{{- end -}}
{{- end -}}

{{/* Addresses ----------------------------------------------------------------------------- */}}
{{/* Comma list of this region's coordinator API URLs (one per replica, stable DNS names). */}}
{{- define "heliograph.coordinator.urls" -}}
{{- $hl := include "heliograph.coordinator.headless" . -}}
{{- $sts := include "heliograph.coordinator.fullname" . -}}
{{- $urls := list -}}
{{- range $i := until (int .Values.coordinator.replicas) -}}
{{- $urls = append $urls (printf "http://%s-%d.%s.%s.svc.%s:%d" $sts $i $hl $.Release.Namespace $.Values.clusterDomain (int $.Values.ports.coordinatorApi)) -}}
{{- end -}}
{{- join "," $urls -}}
{{- end -}}

{{- define "heliograph.redis.url" -}}
{{- if .Values.redis.url -}}
{{- .Values.redis.url -}}
{{- else if .Values.redis.enabled -}}
{{- printf "redis://%s.%s.svc.%s:%d" (include "heliograph.redis.fullname" .) .Release.Namespace .Values.clusterDomain (int .Values.redis.port) -}}
{{- end -}}
{{- end -}}

{{/* Seconds the edge needs after the kubelet starts terminating it: preStop sleep, the drain
     (--shutdown-grace-ms, rounded up) and the binary's own 2 s backstop past the grace. */}}
{{- define "heliograph.edge.minTerminationSeconds" -}}
{{- $grace := div (add (int64 .Values.edge.shutdownGraceMs) 999) 1000 -}}
{{- add (int64 .Values.edge.preStopSleepSeconds) $grace 2 -}}
{{- end -}}

{{- define "heliograph.edge.terminationSeconds" -}}
{{- $min := include "heliograph.edge.minTerminationSeconds" . | int64 -}}
{{- if .Values.edge.terminationGracePeriodSeconds -}}
{{- $set := int64 .Values.edge.terminationGracePeriodSeconds -}}
{{- if lt $set $min -}}
{{- fail (printf "edge.terminationGracePeriodSeconds (%d) must be at least preStopSleepSeconds + ceil(shutdownGraceMs/1000) + 2 = %d" $set $min) -}}
{{- end -}}
{{- $set -}}
{{- else -}}
{{- add $min 3 -}}
{{- end -}}
{{- end -}}
