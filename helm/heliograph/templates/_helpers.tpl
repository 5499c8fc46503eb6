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

{{/* "true" when this release runs its own Redis (redis.enabled and no external one). */}}
{{- define "heliograph.redis.bundled" -}}
{{- $r := .Values.redis -}}
{{- if and $r.enabled (not $r.url) (not $r.existingSecret) (not $r.sentinel.addresses) -}}true{{- end -}}
{{- end -}}

{{/* The Redis URL without credentials; empty with redis.existingSecret, without Redis, and with
     Sentinel but no redis.url (the edge then uses redis://). Also checks the Redis values. */}}
{{- define "heliograph.redis.url" -}}
{{- $r := .Values.redis -}}
{{- if and $r.sentinel.addresses (not $r.sentinel.master) -}}
{{- fail "redis.sentinel.master must be set with redis.sentinel.addresses (--redis-sentinel needs --redis-sentinel-master)" -}}
{{- end -}}
{{- if $r.url -}}
{{- if regexMatch "^[a-z]+://[^/]*@" $r.url -}}
{{- fail "redis.url must not carry credentials: use redis.auth.existingSecret or redis.existingSecret" -}}
{{- end -}}
{{- if and (regexMatch "^[a-z]+://(/.*)?$" $r.url) (not $r.sentinel.addresses) -}}
{{- fail "redis.url without a host is only allowed with redis.sentinel.addresses" -}}
{{- end -}}
{{- end -}}
{{- if and $r.tls.existingSecret (not $r.existingSecret) -}}
{{- if not (hasPrefix "rediss://" $r.url) -}}
{{- fail "redis.tls.existingSecret needs a rediss:// redis.url (with Sentinel the scheme alone: rediss://); the chart's own Redis serves no TLS" -}}
{{- end -}}
{{- end -}}
{{- if $r.existingSecret -}}
{{- else if $r.url -}}
{{- $r.url -}}
{{- else if include "heliograph.redis.bundled" . -}}
{{- printf "redis://%s.%s.svc.%s:%d" (include "heliograph.redis.fullname" .) .Release.Namespace .Values.clusterDomain (int $r.port) -}}
{{- end -}}
{{- end -}}

{{/* "true" when the edges use a Redis at all. */}}
{{- define "heliograph.redis.used" -}}
{{- $r := .Values.redis -}}
{{- if or $r.existingSecret $r.url $r.sentinel.addresses (include "heliograph.redis.bundled" .) -}}true{{- end -}}
{{- end -}}

{{/* The edges' Redis environment: the URL (HELIOGRAPH_REDIS, from a Secret when it holds
     credentials) and the passwords, from Secrets. Nothing of it goes into the arguments. */}}
{{- define "heliograph.redis.env" -}}
{{- $r := .Values.redis -}}
{{- $url := include "heliograph.redis.url" . -}}
{{- if include "heliograph.redis.used" . }}
{{- if $r.existingSecret }}
- name: HELIOGRAPH_REDIS
  valueFrom:
    secretKeyRef:
      name: {{ $r.existingSecret }}
      key: {{ $r.existingSecretKey }}
{{- else if $url }}
- name: HELIOGRAPH_REDIS
  value: {{ $url | quote }}
{{- end }}
{{- if $r.auth.existingSecret }}
- name: HELIOGRAPH_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $r.auth.existingSecret }}
      key: {{ $r.auth.existingSecretKey }}
{{- end }}
{{- if and $r.sentinel.addresses $r.sentinel.auth.existingSecret }}
- name: HELIOGRAPH_REDIS_SENTINEL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $r.sentinel.auth.existingSecret }}
      key: {{ $r.sentinel.auth.existingSecretKey }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "heliograph.redis.tlsDir" -}}/etc/heliograph-redis-tls{{- end -}}

{{/* The edges' non-secret Redis flags, as a YAML list: TLS files, ACL user, Sentinel. */}}
{{- define "heliograph.redis.args" -}}
{{- $r := .Values.redis -}}
{{- if include "heliograph.redis.used" . -}}
{{- $d := include "heliograph.redis.tlsDir" . -}}
{{- if $r.tls.existingSecret }}
{{- if $r.tls.ca }}
- --redis-ca
- {{ $d }}/ca.crt
{{- end }}
{{- if $r.tls.clientCertificate }}
- --redis-client-cert
- {{ $d }}/tls.crt
- --redis-client-key
- {{ $d }}/tls.key
{{- end }}
{{- end }}
{{- if $r.auth.username }}
- --redis-username
- {{ $r.auth.username | quote }}
{{- end }}
{{- range $r.sentinel.addresses }}
- --redis-sentinel
- {{ . | quote }}
{{- end }}
{{- if $r.sentinel.addresses }}
- --redis-sentinel-master
- {{ $r.sentinel.master | quote }}
{{- if $r.sentinel.auth.username }}
- --redis-sentinel-username
- {{ $r.sentinel.auth.username | quote }}
{{- end }}
{{- end }}
{{- end -}}
{{- end -}}

{{/* "true" when the edges mount redis.tls.existingSecret. */}}
{{- define "heliograph.redis.tlsMounted" -}}
{{- $t := .Values.redis.tls -}}
{{- if and (include "heliograph.redis.used" .) $t.existingSecret (or $t.ca $t.clientCertificate) -}}true{{- end -}}
{{- end -}}

{{- define "heliograph.redis.tlsVolumeMount" -}}
{{- if include "heliograph.redis.tlsMounted" . }}
- name: redis-tls
  mountPath: {{ include "heliograph.redis.tlsDir" . }}
  readOnly: true
{{- end -}}
{{- end -}}

{{- define "heliograph.redis.tlsVolume" -}}
{{- $t := .Values.redis.tls -}}
{{- if include "heliograph.redis.tlsMounted" . }}
- name: redis-tls
  secret:
    secretName: {{ $t.existingSecret }}
    defaultMode: 0440
    items:
      {{- if $t.ca }}
      - key: ca.crt
        path: ca.crt
      {{- end }}
      {{- if $t.clientCertificate }}
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
      {{- end }}
{{- end -}}
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

{{/* Coordinator topology ------------------------------------------------------------------ */}}
{{/* "true" with coordinator.topology regions (one Raft group per region). Also checks the
     topology values: the render fails on values the chosen topology cannot use. */}}
{{- define "heliograph.coordinator.regional" -}}
{{- $c := .Values.coordinator -}}
{{- if eq $c.topology "regions" -}}
{{- if $c.peers -}}
{{- fail "coordinator.peers is for coordinator.topology global: with topology regions each region runs its own group; list the other regions' gateways in coordinator.regions instead" -}}
{{- end -}}
{{- if $c.learnerOnly -}}
{{- fail "coordinator.learnerOnly is for coordinator.topology global: with topology regions every replica is a voter of its own region's group" -}}
{{- end -}}
{{- if hasKey ($c.regions | default dict) .Values.region -}}
{{- fail (printf "coordinator.regions must not name this release's own region %q: it lists the OTHER regions' gateways" .Values.region) -}}
{{- end -}}
true
{{- else if $c.regions -}}
{{- fail "coordinator.regions is for coordinator.topology regions: with topology global every region's replicas are in the one group (coordinator.peers)" -}}
{{- end -}}
{{- end -}}

{{/* REGIONS of coordinator-run.sh: "eu=host:port,host:port;ap=host:port" (regions sorted). */}}
{{- define "heliograph.coordinator.regionsEnv" -}}
{{- $entries := list -}}
{{- range $name, $gateways := (.Values.coordinator.regions | default dict) -}}
{{- $entries = append $entries (printf "%s=%s" $name (join "," $gateways)) -}}
{{- end -}}
{{- join ";" $entries -}}
{{- end -}}
