{{/*
_helpers.tpl — names, labels and derived values shared by the templates:
resource names, the image reference, the etcd member list and endpoints,
and the control plane's termination grace period.
*/}}

{{- define "polis.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Names are cut to 40 characters so that suffixes such as
"-etcd-headless" and "-sidecar-<domain>" still fit in 63. */}}
{{- define "polis.fullname" -}}
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

{{- define "polis.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "polis.labels" -}}
helm.sh/chart: {{ include "polis.chart" . }}
app.kubernetes.io/name: {{ include "polis.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: polis
{{- end -}}

{{/* Selector labels of one component; call with (dict "ctx" $ "component" "x"). */}}
{{- define "polis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "polis.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "polis.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "polis.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "polis.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "polis.controlplane.fullname" -}}
{{- printf "%s-controlplane" (include "polis.fullname" .) -}}
{{- end -}}

{{- define "polis.etcd.fullname" -}}
{{- printf "%s-etcd" (include "polis.fullname" .) -}}
{{- end -}}

{{- define "polis.etcd.headless" -}}
{{- printf "%s-etcd-headless" (include "polis.fullname" .) -}}
{{- end -}}

{{/* DNS suffix of the etcd members: <pod>.<this>. */}}
{{- define "polis.etcd.domain" -}}
{{- printf "%s.%s.svc.%s" (include "polis.etcd.headless" .) .Release.Namespace .Values.clusterDomain -}}
{{- end -}}

{{/* --initial-cluster: name-0=http://name-0.<domain>:2380,... */}}
{{- define "polis.etcd.initialCluster" -}}
{{- $name := include "polis.etcd.fullname" . -}}
{{- $domain := include "polis.etcd.domain" . -}}
{{- $peers := list -}}
{{- range $i := until (int .Values.etcd.replicas) -}}
{{- $peers = append $peers (printf "%s-%d=http://%s-%d.%s:%d" $name $i $name $i $domain (int $.Values.etcd.ports.peer)) -}}
{{- end -}}
{{- join "," $peers -}}
{{- end -}}

{{/* --etcd for the control plane: every member, so that its client fails
over by itself when one member is down. */}}
{{- define "polis.etcd.endpoints" -}}
{{- if .Values.etcd.enabled -}}
{{- $name := include "polis.etcd.fullname" . -}}
{{- $domain := include "polis.etcd.domain" . -}}
{{- $eps := list -}}
{{- range $i := until (int .Values.etcd.replicas) -}}
{{- $eps = append $eps (printf "http://%s-%d.%s:%d" $name $i $domain (int $.Values.etcd.ports.client)) -}}
{{- end -}}
{{- join "," $eps -}}
{{- else -}}
{{- if not .Values.etcd.external.endpoints -}}
{{- fail "etcd.enabled is false: set etcd.external.endpoints (otherwise every control-plane replica would start its own private etcd)" -}}
{{- end -}}
{{- join "," .Values.etcd.external.endpoints -}}
{{- end -}}
{{- end -}}

{{/* Grace period: the preStop sleep, then --shutdown-grace-ms rounded up,
then 5 s for the process to close etcd connections and exit. */}}
{{- define "polis.controlplane.terminationGrace" -}}
{{- add (int .Values.controlPlane.preStopSleepSeconds) (div (add (int .Values.controlPlane.shutdownGraceMs) 999) 1000) 5 -}}
{{- end -}}

{{/* host:port of the control plane's gRPC Service, for the sidecars. */}}
{{- define "polis.controlplane.address" -}}
{{- printf "%s.%s.svc.%s:%d" (include "polis.controlplane.fullname" .) .Release.Namespace .Values.clusterDomain (int .Values.controlPlane.service.ports.grpc) -}}
{{- end -}}
