{{/* Name of the chart, overridable. */}}
{{- define "geocache-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name, plus the chart name unless the release already has it. */}}
{{- define "geocache-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if or (contains $name .Release.Name) (hasPrefix .Release.Name $name) }}
{{- /* release "geocache" of chart "geocache-operator": "geocache-operator", not "geocache-geocache-operator" */}}
{{- if contains $name .Release.Name }}{{ .Release.Name | trunc 63 | trimSuffix "-" }}{{ else }}{{ $name | trunc 63 | trimSuffix "-" }}{{ end }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "geocache-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "geocache-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "geocache-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "geocache-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "geocache-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "geocache-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The operator's rules in the namespaces it watches (a ClusterRole when it watches all of
them). Each rule says why it is needed.
*/}}
{{- define "geocache-operator.rules" -}}
# Watch GeoCaches (the controller's main stream) and add or remove its finalizer (patch).
- apiGroups: ["geocache.dev"]
  resources: ["geocaches"]
  verbs: ["list", "watch", "patch"]
# Write status (observedGeneration, conditions, per-region replication health) by server-side apply.
- apiGroups: ["geocache.dev"]
  resources: ["geocaches/status"]
  verbs: ["patch"]
# Children carry owner references with blockOwnerDeletion, which the OwnerReferencesPermissionEnforcement
# admission plugin only allows to who may update the owner's finalizers.
- apiGroups: ["geocache.dev"]
  resources: ["geocaches/finalizers"]
  verbs: ["update"]
# The nodes of each region: server-side applied (create + patch), watched to react to their status,
# deleted when a region leaves the spec.
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["list", "watch", "create", "patch", "delete"]
# Peers, client and replication Services, and the ConfigMap holding each region's peers file: same lifecycle.
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["list", "watch", "create", "patch", "delete"]
# One PodDisruptionBudget per region: same lifecycle.
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["list", "watch", "create", "patch", "delete"]
# Find a region's ready pods (whose status to read, and a node address for NodePort replication Services);
# watch them so that a pod becoming ready or failing updates the GeoCache's status at once.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
# Read each node's GET /v1/status (peers, replication lag) through the API server's pod proxy.
- apiGroups: [""]
  resources: ["pods/proxy"]
  verbs: ["get"]
# Read the kubeconfig Secrets that regions in member clusters reference (cluster.kubeconfigSecretRef);
# keep the GeoCache's CA and client password, and each region's peer certificate and passwords
# (read to renew only when needed, server-side applied, deleted with a removed region). Watched
# (list + watch) so that a deleted Secret is restored, and a new kubeconfig used, in seconds:
# the referenced names are chosen by users at run time, so no resourceNames can narrow this.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
{{- if .Values.certManager.enabled }}
# With spec.security.peerTls.issuerRef (certManager.enabled): each region's cert-manager Certificate.
- apiGroups: ["cert-manager.io"]
  resources: ["certificates"]
  verbs: ["get", "create", "patch"]
{{- end }}
# Publish Events on GeoCaches (core v1 Events, with first and last timestamps); patch raises the
# count of a repeated Event.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
