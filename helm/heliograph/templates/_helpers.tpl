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
{{- if or .Values.jwt.key .Values.jwt.existingSecret -}}
{{- if .Values.jwt.publicKey.existingSecret -}}
{{- fail "jwt.publicKey.existingSecret excludes jwt.key and jwt.existingSecret: an edge verifies join tokens with one key" -}}
{{- end -}}
true
{{- end -}}
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
{{- $scheme := ternary "https" "http" (not (empty $.Values.tls.existingSecret)) -}}
{{- $urls = append $urls (printf "%s://%s-%d.%s.%s.svc.%s:%d" $scheme $sts $i $hl $.Release.Namespace $.Values.clusterDomain (int $.Values.ports.coordinatorApi)) -}}
{{- end -}}
{{- join "," $urls -}}
{{- end -}}

{{/* The Redis URL without credentials; empty with redis.existingSecret or without Redis. */}}
{{- define "heliograph.redis.url" -}}
{{- if .Values.redis.existingSecret -}}
{{- else if .Values.redis.url -}}
{{- if regexMatch "^[a-z]+://[^/]*@" .Values.redis.url -}}
{{- fail "redis.url must not carry credentials: use redis.auth.existingSecret or redis.existingSecret" -}}
{{- end -}}
{{- .Values.redis.url -}}
{{- else if .Values.redis.enabled -}}
{{- printf "redis://%s.%s.svc.%s:%d" (include "heliograph.redis.fullname" .) .Release.Namespace .Values.clusterDomain (int .Values.redis.port) -}}
{{- end -}}
{{- end -}}

{{/* The edges' Redis environment: the URL (HELIOGRAPH_REDIS) and its password, from Secrets
     when they hold credentials. Nothing of it goes into the arguments. */}}
{{- define "heliograph.redis.env" -}}
{{- $r := .Values.redis -}}
{{- $url := include "heliograph.redis.url" . -}}
{{- if $r.existingSecret }}
- name: HELIOGRAPH_REDIS
  valueFrom:
    secretKeyRef:
      name: {{ $r.existingSecret }}
      key: {{ $r.existingSecretKey }}
{{- else if $url }}
{{- if $r.auth.existingSecret }}
- name: HELIOGRAPH_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $r.auth.existingSecret }}
      key: {{ $r.auth.existingSecretKey }}
{{- $parts := regexSplit "://" $url 2 }}
- name: HELIOGRAPH_REDIS
  value: {{ printf "%s://%s:$(HELIOGRAPH_REDIS_PASSWORD)@%s" (index $parts 0) $r.auth.username (index $parts 1) | quote }}
{{- else }}
- name: HELIOGRAPH_REDIS
  value: {{ $url | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Mutual TLS ---------------------------------------------------------------------------- */}}
{{- define "heliograph.tls.dir" -}}/etc/heliograph-tls{{- end -}}

{{/* The --tls-* flags, as a YAML list (edge args; coordinator `serve` args). */}}
{{- define "heliograph.tls.args" -}}
{{- if .Values.tls.existingSecret -}}
{{- $d := include "heliograph.tls.dir" . }}
- --tls-cert
- {{ $d }}/tls.crt
- --tls-key
- {{ $d }}/tls.key
- --tls-ca
- {{ $d }}/ca.crt
{{- end -}}
{{- end -}}

{{- define "heliograph.tls.volumeMount" -}}
{{- if .Values.tls.existingSecret }}
- name: tls
  mountPath: {{ include "heliograph.tls.dir" . }}
  readOnly: true
{{- end -}}
{{- end -}}

{{- define "heliograph.tls.volume" -}}
{{- if .Values.tls.existingSecret }}
- name: tls
  secret:
    secretName: {{ .Values.tls.existingSecret }}
    defaultMode: 0440
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
      - key: ca.crt
        path: ca.crt
{{- end -}}
{{- end -}}

{{/* JWT public key (ES256/RS256) --------------------------------------------------------- */}}
{{- define "heliograph.jwt.publicKeyDir" -}}/etc/heliograph-jwt{{- end -}}

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
