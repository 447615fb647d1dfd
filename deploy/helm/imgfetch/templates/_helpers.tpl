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

{{/* Where a pod's own NATS credentials (its password file, or its .creds file) are mounted. */}}
{{- define "imgfetch.natsPasswordDir" -}}
/var/run/secrets/imgfetch/nats
{{- end -}}

{{/* The file in imgfetch.natsPasswordDir the binaries read: `password` or `nats.creds`. */}}
{{- define "imgfetch.natsCredentialsFile" -}}
{{- if eq .Values.nats.auth.mode "creds" -}}
nats.creds
{{- else -}}
password
{{- end -}}
{{- end -}}

{{/* Where the gateway's init container finds every replica's credentials (the whole Secret);
     the gateway container itself never mounts it. */}}
{{- define "imgfetch.natsIdentitiesDir" -}}
/var/run/secrets/imgfetch/nats-identities
{{- end -}}

{{/* Where the CA of a TLS NATS is mounted, and the file. */}}
{{- define "imgfetch.natsCaDir" -}}
/var/run/secrets/imgfetch/nats-ca
{{- end -}}

{{- define "imgfetch.natsCaFile" -}}
{{ include "imgfetch.natsCaDir" . }}/ca.crt
{{- end -}}

{{/* The gateway StatefulSet's name; its pods are <name>-<ordinal>. */}}
{{- define "imgfetch.gatewayName" -}}
{{ include "imgfetch.fullname" . }}-gateway
{{- end -}}

{{/* Every gateway pod name there can be, as a JSON list: ordinals 0 to the HPA's maxReplicas
     (or `replicas` without the HPA) less one. A StatefulSet never runs more than its replicas,
     not even during a rollout, so each of these names is one NATS user. */}}
{{- define "imgfetch.gatewayPods" -}}
{{- $g := .Values.gateway -}}
{{- $max := int (ternary $g.autoscaling.maxReplicas $g.replicas $g.autoscaling.enabled) -}}
{{- if lt $max 1 -}}
{{- fail (printf "gateway: %s must be at least 1" (ternary "autoscaling.maxReplicas" "replicas" $g.autoscaling.enabled)) -}}
{{- end -}}
{{- $name := include "imgfetch.gatewayName" . -}}
{{- if gt (len $name) 52 -}}
{{- fail (printf "the gateway StatefulSet's name %q is over 52 characters (pod names, which are NATS users, must stay DNS labels): shorten the release name or fullnameOverride" $name) -}}
{{- end -}}
{{- $pods := list -}}
{{- range $i := until $max -}}
{{- $pods = append $pods (printf "%s-%d" $name $i) -}}
{{- end -}}
{{- toJson $pods -}}
{{- end -}}

{{/* The NATS permissions of one role, as YAML: (dict "root" $ "role" "gateway"|"resolver"|
     "publisher" ["instance" POD]). The same as the roles block of the repository's nats.conf
     (scripts/check-deploy.sh compares them), with the stream names of values and the gateway's
     instance-specific subjects naming its own pod. */}}
{{- define "imgfetch.natsPermissions" -}}
{{- $s := .root.Values.nats.stream -}}
{{- $dlq := .root.Values.nats.deadLetterStream -}}
{{- if eq .role "gateway" -}}
publish:
  allow:
    - "imgfetch.gwreq.>"
    - "imgfetch.ping.>"
    - "imgfetch.flow.>"
    - "me.>"
    - "$JS.API.STREAM.INFO.{{ $s }}"
    - "$JS.API.INFO"
    - "$JS.API.STREAM.INFO.KV_IMGFETCH_RESULTS"
    - "$JS.API.STREAM.CREATE.KV_IMGFETCH_RESULTS"
    - "$JS.API.DIRECT.GET.KV_IMGFETCH_RESULTS.>"
    - "$KV.IMGFETCH_RESULTS.>"
    - "imgfetch.gateway.>"
subscribe:
  allow:
    - "imgfetch.reply.{{ .instance }}.>"
    - "imgfetch.gateway.{{ .instance }}"
    - "_INBOX_gateway.{{ .instance }}.>"
    - "imgfetch.req.> imgfetch-gateway-sentinel"
    - "imgfetch.fetch imgfetch-gateway"
    - "$SRV.PING"
    - "$SRV.INFO"
    - "$SRV.STATS"
    - "$SRV.*.imgfetch-gateway"
    - "$SRV.*.imgfetch-gateway.*"
allow_responses: true
{{- else if eq .role "resolver" -}}
publish:
  allow:
    - "$JS.API.STREAM.INFO.{{ $s }}"
    - "$JS.API.STREAM.CREATE.{{ $s }}"
    - "$JS.API.STREAM.UPDATE.{{ $s }}"
    - "$JS.API.CONSUMER.CREATE.{{ $s }}.>"
    - "$JS.API.CONSUMER.INFO.{{ $s }}.>"
    - "$JS.API.CONSUMER.MSG.NEXT.{{ $s }}.>"
    - "$JS.ACK.{{ $s }}.>"
    - "$JS.API.STREAM.MSG.GET.{{ $s }}"
    - "$JS.API.STREAM.MSG.DELETE.{{ $s }}"
    - "$JS.API.STREAM.INFO.{{ $dlq }}"
    - "$JS.API.STREAM.CREATE.{{ $dlq }}"
    - "$JS.API.STREAM.UPDATE.{{ $dlq }}"
    - "$JS.API.CONSUMER.CREATE.{{ $dlq }}.imgfetch-dead-letters.>"
    - "$JS.API.CONSUMER.INFO.{{ $dlq }}.imgfetch-dead-letters"
    - "$JS.API.CONSUMER.MSG.NEXT.{{ $dlq }}.imgfetch-dead-letters"
    - "$JS.ACK.{{ $dlq }}.imgfetch-dead-letters.>"
    - "imgfetch.dlq.>"
    - "imgfetch.reply.>"
    - "me.>"
    - "_INBOX.>"
subscribe:
  allow:
    - "_INBOX_resolver.>"
    - "imgfetch.flow.>"
    - "imgfetch.ping.> imgfetch-resolver"
    - "imgfetch.stat.> imgfetch-resolver"
    - "$SRV.PING"
    - "$SRV.INFO"
    - "$SRV.STATS"
    - "$SRV.*.imgfetch-resolver"
    - "$SRV.*.imgfetch-resolver.*"
allow_responses: true
{{- else if eq .role "publisher" -}}
publish:
  allow:
    - "imgfetch.req.>"
    - "imgfetch.ping.>"
    - "imgfetch.fetch"
    - "imgfetch.stat.>"
    - "$SRV.>"
    - "$JS.API.STREAM.INFO.{{ $s }}"
    - "$JS.API.CONSUMER.INFO.{{ $s }}.>"
    - "$JS.API.STREAM.INFO.{{ $dlq }}"
    - "$JS.API.STREAM.MSG.GET.{{ $dlq }}"
    - "$JS.API.CONSUMER.INFO.{{ $dlq }}.>"
subscribe:
  allow:
    - "me.>"
    - "_INBOX.>"
{{- else if eq .role "zone" -}}
{{- /* A leaf zone's user on the hub: (dict "root" $ "role" "zone" "zone" ZONE), as nats.conf's
       zone-<zone> users. allow_responses and queue groups do not cross a leaf link, hence the
       requesters' inboxes and the ping and stat subjects without a queue group. */ -}}
{{- $api := printf "$JS.%s.API" .root.Values.nats.jetstreamDomain -}}
publish:
  allow:
    - "{{ $api }}.STREAM.INFO.{{ $s }}"
    {{- range $net := .zone.networks }}
    - "{{ $api }}.CONSUMER.INFO.{{ $s }}.imgfetch-{{ $net.name }}"
    - "{{ $api }}.CONSUMER.MSG.NEXT.{{ $s }}.imgfetch-{{ $net.name }}"
    - "$JS.ACK.{{ $s }}.imgfetch-{{ $net.name }}.>"
    - "imgfetch.dlq.{{ $net.name }}"
    - "imgfetch.reply.*.{{ $net.name }}.>"
    {{- end }}
    - "me.>"
    - "_INBOX.>"
    - "_INBOX_gateway.>"
subscribe:
  allow:
    - "_INBOX_resolver.{{ .zone.name }}.>"
    - "imgfetch.flow.{{ .zone.name }}.>"
    {{- range $net := .zone.networks }}
    - "imgfetch.ping.{{ $net.name }}"
    - "imgfetch.stat.{{ $net.name }}"
    {{- end }}
    - "$SRV.PING"
    - "$SRV.INFO"
    - "$SRV.STATS"
    - "$SRV.*.imgfetch-resolver"
    - "$SRV.*.imgfetch-resolver.*"
{{- else -}}
{{- fail (printf "no NATS role %q" .role) -}}
{{- end -}}
{{- end -}}

{{/* The passwords of some NATS users, as JSON (user -> password): (dict "root" $ "what"
     "nats.auth.resolver" "auth" CONFIG "users" LIST), CONFIG holding secretName,
     existingSecret and passwords. A chart-created Secret (existingSecret false) takes a user's
     password from `passwords`, else from the Secret as it is in the cluster (`lookup`: kept
     across upgrades), else a random one; offline renderings cannot look up and so make fresh
     ones. An existing Secret must hold a key per user; it is read with `lookup`, which an
     offline rendering cannot do, so that fails rather than write wrong passwords. */}}
{{- define "imgfetch.passwords" -}}
{{- $cfg := .auth -}}
{{- $given := $cfg.passwords | default dict -}}
{{- $found := dict -}}
{{- with lookup "v1" "Secret" .root.Release.Namespace $cfg.secretName -}}
{{- $found = .data | default dict -}}
{{- end -}}
{{- $out := dict -}}
{{- range $user := .users -}}
{{- if $cfg.existingSecret -}}
{{- if $given -}}
{{- fail (printf "%s: passwords are given although existingSecret is true; give them in the Secret %s instead" $.what $cfg.secretName) -}}
{{- end -}}
{{- if not (hasKey $found $user) -}}
{{- fail (printf "%s.existingSecret: the Secret %s has no key %q, or cannot be read (offline renderings such as `helm template` cannot read Secrets: install or upgrade, or render with --dry-run=server). It needs a key per NATS user: %s" $.what $cfg.secretName $user (join ", " $.users)) -}}
{{- end -}}
{{- $_ := set $out $user (index $found $user | b64dec) -}}
{{- else if hasKey $given $user -}}
{{- $_ := set $out $user (toString (index $given $user)) -}}
{{- else if hasKey $found $user -}}
{{- $_ := set $out $user (index $found $user | b64dec) -}}
{{- else -}}
{{- $_ := set $out $user (randAlphaNum 32) -}}
{{- end -}}
{{- if lt (len (index $out $user)) 16 -}}
{{- fail (printf "%s: the password of NATS user %q is shorter than 16 characters" $.what $user) -}}
{{- end -}}
{{- end -}}
{{- range $user, $_ := $given -}}
{{- if not (has $user $.users) -}}
{{- fail (printf "%s.passwords: %q is none of the users %s" $.what $user (join ", " $.users)) -}}
{{- end -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* A value as JSON, indented, with `<`, `>` and `&` left as they are (nats-server reads JSON
     but not the \u escapes toPrettyJson writes for them): (dict "v" VALUE "indent" "  "). */}}
{{- define "imgfetch.rawJson" -}}
{{- $v := .v -}}
{{- $in := .indent | default "" -}}
{{- if and (kindIs "map" $v) $v -}}
{
{{- range $i, $k := keys $v | sortAlpha }}{{ if $i }},{{ end }}
{{ $in }}  {{ $k | toRawJson }}: {{ include "imgfetch.rawJson" (dict "v" (get $v $k) "indent" (printf "%s  " $in)) }}
{{- end }}
{{ $in }}}
{{- else if and (kindIs "slice" $v) $v -}}
[
{{- range $i, $item := $v }}{{ if $i }},{{ end }}
{{ $in }}  {{ include "imgfetch.rawJson" (dict "v" $item "indent" (printf "%s  " $in)) }}
{{- end }}
{{ $in }}]
{{- else -}}
{{- $v | toRawJson -}}
{{- end -}}
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

{{/* The resolver TOML's connection to the hub as the resolver role, and the streams. */}}
{{- define "imgfetch.resolverNats" -}}
nats_url = {{ .Values.nats.url | toJson }}
{{- if eq .Values.nats.auth.mode "creds" }}
# NATS role `resolver`: the user JWT and nkey seed of a .creds file from its Secret.
nats_creds = "{{ include "imgfetch.natsPasswordDir" . }}/nats.creds"
{{- else }}
# NATS role `resolver`; the password is a file from its Secret.
nats_user = {{ .Values.nats.auth.resolver.user | toJson }}
nats_password_file = "{{ include "imgfetch.natsPasswordDir" . }}/password"
{{- end }}
{{- if .Values.nats.tls.enabled }}
# TLS, trusting the CA of the NATS server's certificate.
nats_tls_ca = "{{ include "imgfetch.natsCaFile" . }}"
{{- end }}
{{- end -}}

{{/* The resolver TOML of one zone: (dict "root" $ "zone" ZONE). Everything but the instance
     name (the pod's) is here, so that --check-config on this file checks what the pods run. */}}
{{- define "imgfetch.resolverToml" -}}
{{- $root := .root -}}
{{- $r := $root.Values.resolver -}}
{{- if .zone.leaf }}
# A leaf zone: the zone's own leaf nats-server, as its local user `resolver`, whose password is
# the zone's own (not the hub's); the hub's stream through its JetStream domain. The hub side
# (<release>-resolver-hub) makes this zone's consumers and collects its dead letters.
nats_url = "nats://{{ include "imgfetch.leafName" (dict "root" $root "zone" .zone) }}:4222"
nats_user = "resolver"
nats_password_file = "{{ include "imgfetch.natsPasswordDir" $root }}/password"
jetstream_domain = {{ $root.Values.nats.jetstreamDomain | toJson }}
zone = {{ .zone.name | toJson }}
provision = false
dead_letter_collector = false
{{- with .zone.leaf.pullAhead }}
pull_ahead = {{ int . }}
{{- end }}
{{- else }}
{{ include "imgfetch.resolverNats" $root }}
{{- end }}
stream = {{ $root.Values.nats.stream | toJson }}
dlq_stream = {{ $root.Values.nats.deadLetterStream | toJson }}
stream_replicas = {{ int $root.Values.nats.streamReplicas }}
{{- if and $root.Values.nack.enabled (not .zone.leaf) }}
# NACK owns the streams and consumers: only verify them.
provision = false
{{- end }}
concurrency = {{ int $r.concurrency }}
http_listen = "0.0.0.0:{{ int $r.adminPort }}"
log_format = "json"
grace = {{ include "imgfetch.duration" (list $r "grace" "graceSeconds" "resolver") | toJson }}
{{- range $key, $value := $r.extraConfig }}
{{- if has $key (list "nats_url" "nats_user" "nats_password_file" "nats_creds" "nats_tls_ca" "stream" "dlq_stream" "stream_replicas" "provision" "concurrency" "http_listen" "log_format" "grace" "networks" "jetstream_domain" "zone" "dead_letter_collector" "dead_letters_only" "pull_ahead") }}
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

{{/* Milliseconds of a duration in the binaries' human form ("30s", "1m 30s", "500ms", "2h",
     "7d"): (list VALUE "key.path"). Anything else, a bare number included, fails naming the key. */}}
{{- define "imgfetch.durationMs" -}}
{{- $text := toString (index . 0) | trim -}}
{{- if not (regexMatch "^([0-9]+(ms|s|m|h|d) *)+$" $text) -}}
{{- fail (printf "%s: %q is not a duration: write it as 30s, 1m 30s or 500ms (units: ms, s, m, h, d)" (index . 1) $text) -}}
{{- end -}}
{{- $units := dict "ms" 1 "s" 1000 "m" 60000 "h" 3600000 "d" 86400000 -}}
{{- $ms := 0 -}}
{{- range $part := regexFindAll "[0-9]+(ms|s|m|h|d)" $text -1 -}}
{{- $ms = add $ms (mul (regexFind "^[0-9]+" $part | int64) (get $units (regexReplaceAll "^[0-9]+" $part ""))) -}}
{{- end -}}
{{- $ms -}}
{{- end -}}

{{/* A duration setting that took a number of seconds before: (list VALUES "grace" "graceSeconds"
     "gateway"). The old key, when a values file still sets it, as "<n>s" (NOTES.txt says it is
     deprecated); else the new one, checked. */}}
{{- define "imgfetch.duration" -}}
{{- $values := index . 0 -}}
{{- $new := printf "%s.%s" (index . 3) (index . 1) -}}
{{- $old := index . 2 -}}
{{- if hasKey $values $old -}}
{{- $seconds := toString (index $values $old) -}}
{{- if not (regexMatch "^[0-9]+$" $seconds) -}}
{{- fail (printf "%s.%s (deprecated): %q is not a whole number of seconds; give %s instead, a duration such as 30s" (index . 3) $old $seconds $new) -}}
{{- end -}}
{{- printf "%ss" $seconds -}}
{{- else -}}
{{- $text := toString (index $values (index . 1)) | trim -}}
{{- $_ := include "imgfetch.durationMs" (list $text $new) -}}
{{- $text -}}
{{- end -}}
{{- end -}}

{{/* Whole seconds of a duration, rounded up: (list VALUE "key.path"). */}}
{{- define "imgfetch.durationSeconds" -}}
{{- div (add (include "imgfetch.durationMs" .) 999) 1000 -}}
{{- end -}}

{{/* The leaf nats-server of a leaf zone (Deployment, Service and Secret): (dict "root" $ "zone" ZONE). */}}
{{- define "imgfetch.leafName" -}}
{{ include "imgfetch.fullname" .root }}-leaf-{{ .zone.name }}
{{- end -}}

{{/* The leaf zones, as a JSON list of zones. */}}
{{- define "imgfetch.leafZones" -}}
{{- $out := list -}}
{{- range $zone := .Values.zones -}}
{{- if $zone.leaf -}}
{{- $out = append $out $zone -}}
{{- end -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* The hub side of the leaf zones: (dict "root" $ "provision" BOOL). With provision, the TOML
     of `imgfetch-resolver --provision-only`, which makes the leaf zones' consumers (it opens no
     store: each network's url is only checked); without, that of the dead-letter collector
     serving no network. */}}
{{- define "imgfetch.hubToml" -}}
{{- $root := .root -}}
{{ include "imgfetch.resolverNats" $root }}
stream = {{ $root.Values.nats.stream | toJson }}
dlq_stream = {{ $root.Values.nats.deadLetterStream | toJson }}
stream_replicas = {{ int $root.Values.nats.streamReplicas }}
http_listen = "0.0.0.0:{{ int $root.Values.resolver.adminPort }}"
log_format = "json"
{{- if .provision }}
{{- range $zone := include "imgfetch.leafZones" $root | fromJsonArray }}
{{- range $net := $zone.networks }}

# zone {{ $zone.name }}, behind its leaf node
[networks.{{ $net.name }}]
url = {{ $net.store.url | toJson }}
{{- end }}
{{- end }}
{{- else }}
dead_letters_only = true
grace = {{ include "imgfetch.duration" (list $root.Values.resolver "grace" "graceSeconds" "resolver") | toJson }}
{{- end }}
{{- end -}}

{{/* The volume mounts of the hub side of the leaf zones (leaf.yaml): its NATS credentials,
     the NATS CA, the two TOML files. */}}
{{- define "imgfetch.hubMounts" -}}
- name: nats-credentials
  mountPath: {{ include "imgfetch.natsPasswordDir" . }}
  readOnly: true
- name: config
  mountPath: /etc/imgfetch
  readOnly: true
{{- if .Values.nats.tls.enabled }}
- name: nats-ca
  mountPath: {{ include "imgfetch.natsCaDir" . }}
  readOnly: true
{{- end }}
{{- end -}}
