{{/* Chart name, as in object names and the app.kubernetes.io/name label. */}}
{{- define "imgfetch.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Prefix of every object name: the release name, with the chart name unless it holds it. */}}
{{- define "imgfetch.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "gateway" ["zone" NAME]). */}}
{{- define "imgfetch.selectorLabels" -}}
app.kubernetes.io/name: {{ include "imgfetch.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- with .zone }}
imgfetch/zone: {{ . }}
{{- end }}
{{- end -}}

{{/* Kubernetes recommended labels, same argument as imgfetch.selectorLabels. */}}
{{- define "imgfetch.labels" -}}
{{ include "imgfetch.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: imgfetch
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* image: (dict "root" $ "image" .Values.image.gateway) */}}
{{- define "imgfetch.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) -}}
{{- end -}}

{{/* Pod security context shared by gateways and resolvers: the restricted Pod Security
     Standard; fsGroup makes mounted Secret files (mode 0440) readable. */}}
{{- define "imgfetch.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "imgfetch.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* Where a role's NATS password file is mounted. */}}
{{- define "imgfetch.natsPasswordDir" -}}
/var/run/secrets/imgfetch/nats
{{- end -}}

{{/* The KEDA monitoring endpoint of NATS. */}}
{{- define "imgfetch.natsMonitoringEndpoint" -}}
{{- default (printf "nats-headless.%s.svc.cluster.local:8222" .Release.Namespace) .Values.nats.monitoringEndpoint -}}
{{- end -}}

{{/* Every network tag of every zone, checked: valid, and in one zone only. */}}
{{- define "imgfetch.networks" -}}
{{- $seen := dict -}}
{{- range $zone := .Values.zones -}}
{{- range $net := $zone.networks -}}
{{- if not (regexMatch "^[A-Za-z0-9_-]{1,64}$" $net.name) -}}
{{- fail (printf "zone %s: network %q: a network tag is 1 to 64 of A-Z a-z 0-9 - _" $zone.name $net.name) -}}
{{- end -}}
{{- if hasKey $seen $net.name -}}
{{- fail (printf "network %q is in zones %s and %s; one zone serves a network" $net.name (get $seen $net.name) $zone.name) -}}
{{- end -}}
{{- $_ := set $seen $net.name $zone.name -}}
{{- end -}}
{{- end -}}
{{- keys $seen | sortAlpha | join "," -}}
{{- end -}}

{{/* A network tag made fit for object names (lower case, no underscores). */}}
{{- define "imgfetch.dnsName" -}}
{{- . | lower | replace "_" "-" -}}
{{- end -}}

{{/* The resolver TOML of one zone: (dict "root" $ "zone" ZONE). Everything but the instance
     name (the pod's) is here, so that --check-config on this file checks what the pods run. */}}
{{- define "imgfetch.resolverToml" -}}
{{- $root := .root -}}
{{- $r := $root.Values.resolver -}}
nats_url = {{ $root.Values.nats.url | toJson }}
# NATS role `resolver`; the password is a file from its Secret.
nats_user = "resolver"
nats_password_file = "{{ include "imgfetch.natsPasswordDir" $root }}/password"
stream = {{ $root.Values.nats.stream | toJson }}
dlq_stream = {{ $root.Values.nats.deadLetterStream | toJson }}
stream_replicas = {{ int $root.Values.nats.streamReplicas }}
{{- if $root.Values.nack.enabled }}
# NACK owns the streams and consumers: only verify them.
provision = false
{{- end }}
concurrency = {{ int $r.concurrency }}
http_listen = "0.0.0.0:{{ int $r.adminPort }}"
log_format = "json"
grace = "{{ int $r.graceSeconds }}s"
{{- range $key, $value := $r.extraConfig }}
{{- if has $key (list "nats_url" "nats_user" "nats_password_file" "nats_creds" "nats_tls_ca" "stream" "dlq_stream" "stream_replicas" "provision" "concurrency" "http_listen" "log_format" "grace" "networks") }}
{{- fail (printf "resolver.extraConfig.%s: the chart sets %s itself; use its own value (docs/DEPLOY.md)" $key $key) }}
{{- end }}
{{ $key }} = {{ $value | toJson }}
{{- end }}
{{- range $net := .zone.networks }}

[networks.{{ $net.name }}]
url = {{ $net.store.url | toJson }}
{{- if hasPrefix "s3://" $net.store.url }}
{{- with $net.store.endpoint }}
endpoint = {{ . | toJson }}
{{- end }}
{{- with $net.store.region }}
region = {{ . | toJson }}
{{- end }}
{{- with $net.store.accessKeyId }}
access_key_id = {{ . | toJson }}
{{- end }}
{{- if $net.store.secretAccessKey }}
secret_access_key_file = "/var/run/secrets/imgfetch/s3/{{ include "imgfetch.dnsName" $net.name }}/secret_access_key"
{{- end }}
{{- if $net.store.allowHttp }}
allow_http = true
{{- end }}
{{- if $net.store.virtualHostedStyle }}
virtual_hosted_style = true
{{- end }}
{{- end }}
{{- end }}
{{- end -}}
