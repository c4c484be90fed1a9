{{/* Chart name. */}}
{{- define "cuttle.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name, with the chart name unless it already contains it. */}}
{{- define "cuttle.fullname" -}}
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

{{- define "cuttle.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cuttle.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "cuttle.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "cuttle.selectorLabels" . }}
app.kubernetes.io/component: proxy
app.kubernetes.io/part-of: cuttle
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "cuttle.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "cuttle.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "cuttle.serviceName" -}}
{{- default (include "cuttle.fullname" .) .Values.service.name }}
{{- end }}

{{/* The Secret the chart writes: holds whatever is not taken from an existing Secret. */}}
{{- define "cuttle.secretName" -}}
{{- include "cuttle.fullname" . }}
{{- end }}

{{- define "cuttle.authEnabled" -}}
{{- if .Values.auth.enabled }}true{{ end }}
{{- end }}

{{- define "cuttle.adminTokenEnabled" -}}
{{- if or .Values.admin.token .Values.admin.existingSecret }}true{{ end }}
{{- end }}

{{/* Cache volume sizeLimit, in Mi: sizeGiB plus headroomPercent. */}}
{{- define "cuttle.cacheVolumeLimit" -}}
{{- $mi := div (mul (int .Values.cache.sizeGiB) 1024 (add 100 (int .Values.cache.headroomPercent))) 100 }}
{{- printf "%dMi" $mi }}
{{- end }}

{{/* Values that cannot be combined, stopped at render time. */}}
{{- define "cuttle.validate" -}}
{{- if and .Values.sharedCache.enabled (not .Values.sharedCache.url) }}
{{- fail "sharedCache.enabled needs sharedCache.url (s3://bucket/prefix)" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (lt (int .Values.autoscaling.maxReplicas) (int .Values.autoscaling.minReplicas)) }}
{{- fail "autoscaling.maxReplicas must be at least autoscaling.minReplicas" }}
{{- end }}
{{- if and .Values.nodePort.enabled (not .Values.auth.enabled) (not .Values.nodePort.allowWithoutAuth) }}
{{- fail "nodePort.enabled needs auth.enabled: behind a NodePort cuttle sees node addresses, which allowClient admits (set nodePort.allowWithoutAuth to override)" }}
{{- end }}
{{- if and .Values.auth.enabled (not .Values.auth.htpasswd) (not .Values.auth.existingSecret) }}
{{- fail "auth.enabled needs auth.htpasswd or auth.existingSecret" }}
{{- end }}
{{- if and .Values.interception.enabled (not .Values.interception.hosts) }}
{{- fail "interception.enabled needs interception.hosts" }}
{{- end }}
{{- if and .Values.interception.enabled (not .Values.interception.existingSecret) }}
{{- fail "interception.enabled needs interception.existingSecret (the CA; every replica must use the same one)" }}
{{- end }}
{{- $drain := add (int .Values.config.shutdownGraceSeconds) (int .Values.preStopSleepSeconds) }}
{{- if le (int .Values.terminationGracePeriodSeconds) $drain }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be above config.shutdownGraceSeconds + preStopSleepSeconds (%d)" (int .Values.terminationGracePeriodSeconds) $drain) }}
{{- end }}
{{- end }}

{{/* cuttle.toml, from .Values.config, .Values.cache and .Values.cacheRules. Strings and lists
     are written as JSON, which is valid TOML for them. */}}
{{- define "cuttle.toml" -}}
# Rendered by the cuttle Helm chart; keys are cuttle's flag names (README "Configuration").
listen = [{{ printf "0.0.0.0:%d" (int .Values.config.port) | toJson }}]
admin-listen = {{ printf "0.0.0.0:%d" (int .Values.admin.port) | toJson }}
cache-dir = "/var/cache/cuttle"
cache-size = {{ printf "%dGiB" (int .Values.cache.sizeGiB) | toJson }}
cache-mem = {{ .Values.cache.mem | toJson }}
max-object-size = {{ .Values.cache.maxObjectSize | toJson }}
allow-client = {{ .Values.config.allowClient | toJson }}
{{- with .Values.config.direct }}
direct = {{ toJson . }}
{{- end }}
{{- with .Values.config.connectPorts }}
{{- $ports := list }}
{{- range . }}{{ $ports = append $ports (toString .) }}{{ end }}
connect-ports = {{ toJson $ports }}
{{- end }}
{{- with .Values.config.allowDomain }}
allow-domain = {{ toJson . }}
{{- end }}
{{- with .Values.config.denyDomain }}
deny-domain = {{ toJson . }}
{{- end }}
{{- with .Values.config.denyDest }}
deny-dest = {{ toJson . }}
{{- end }}
max-connections = {{ int .Values.config.maxConnections }}
shutdown-grace = {{ printf "%ds" (int .Values.config.shutdownGraceSeconds) | toJson }}
log-format = {{ .Values.config.logFormat | toJson }}
log-level = {{ .Values.config.logLevel | toJson }}
auth-realm = {{ .Values.auth.realm | toJson }}
{{- if .Values.sharedCache.enabled }}
shared-cache = {{ .Values.sharedCache.url | toJson }}
{{- with .Values.sharedCache.endpoint }}
shared-cache-endpoint = {{ toJson . }}
{{- end }}
shared-cache-region = {{ .Values.sharedCache.region | toJson }}
shared-cache-path-style = {{ .Values.sharedCache.pathStyle }}
shared-cache-lease = {{ .Values.sharedCache.lease }}
{{- end }}
{{- if .Values.interception.enabled }}
intercept = {{ .Values.interception.hosts | toJson }}
{{- with .Values.interception.noIntercept }}
no-intercept = {{ toJson . }}
{{- end }}
ca-cert = "/etc/cuttle/ca/ca.pem"
ca-key = "/etc/cuttle/ca/ca-key.pem"
{{- end }}
{{- with .Values.config.extra }}
{{ . }}
{{- end }}
{{- range .Values.cacheRules }}

[[cache-rule]]
name = {{ .name | toJson }}
pattern = {{ .pattern | toJson }}
{{- if hasKey . "exclude" }}
exclude = {{ .exclude | toJson }}
{{- end }}
{{- if hasKey . "min" }}
min = {{ .min | toJson }}
{{- end }}
{{- if hasKey . "max" }}
max = {{ .max | toJson }}
{{- end }}
{{- if hasKey . "ignoreClientNoCache" }}
ignore-client-no-cache = {{ .ignoreClientNoCache }}
{{- end }}
{{- with .vary }}
vary = {{ toJson . }}
{{- end }}
{{- end }}
{{- end }}

{{/* cache.mem in MiB, rounded up (decimal units are counted as binary ones: a little more). */}}
{{- define "cuttle.cacheMemMiB" -}}
{{- $m := .Values.cache.mem | toString | trim -}}
{{- $n := regexFind "^[0-9]+" $m | int64 -}}
{{- $u := regexReplaceAll "^[0-9]+ *" $m "" | lower -}}
{{- if hasPrefix "t" $u }}{{ mul $n 1048576 }}
{{- else if hasPrefix "g" $u }}{{ mul $n 1024 }}
{{- else if hasPrefix "m" $u }}{{ $n }}
{{- else if hasPrefix "k" $u }}{{ div (add $n 1023) 1024 }}
{{- else }}{{ div (add $n 1048575) 1048576 }}
{{- end -}}
{{- end }}

{{/* The memory formula (README "Sizing memory"; cuttle's src/config/sizing.rs), in MiB:
     FIXED + 1.5 x cache-mem + disk index per GiB of cache-size + PER_CONNECTION x
     max-connections + FILLS + ORPHAN_FILLS + READ_BUFFER_SLACK. Keep the constants equal to src/config/sizing.rs. */}}
{{- define "cuttle.memoryLimitMiB" -}}
{{- $fixed := 48 -}}
{{- $indexMiBPerGiB := 8 -}}
{{- $perConnKiB := 128 -}}
{{- $fills := 64 -}}
{{- $orphanFills := 16 -}}
{{- $readBufferSlack := 64 -}}
{{- $mem := include "cuttle.cacheMemMiB" . | int64 -}}
{{- $conns := div (add (mul (int64 .Values.config.maxConnections) $perConnKiB) 1023) 1024 -}}
{{- add $fixed (div (add (mul $mem 3) 1) 2) (mul (int64 .Values.cache.sizeGiB) $indexMiBPerGiB) $conns $fills $orphanFills $readBufferSlack -}}
{{- end }}

{{/* Static S3 keys for the shared cache: from existingSecret or the chart's Secret. */}}
{{- define "cuttle.sharedCacheKeys" -}}
{{- if and .Values.sharedCache.enabled (or .Values.sharedCache.existingSecret .Values.sharedCache.accessKey) }}true{{ end }}
{{- end }}
