#!/usr/bin/env bash
# Build the image, push it, and deploy the k8s/ kustomization with it.
#
#   ./deploy.sh [--dry-run] [--tag TAG | --digest DIGEST] [--region REGION] [--k8s-dir DIR]
#               REGISTRY ACCOUNT_ID
#
#   REGISTRY    where the image goes, without a scheme: the ECR registry of the account
#               (ACCOUNT_ID.dkr.ecr.REGION.amazonaws.com) or any other registry you are logged in to
#   ACCOUNT_ID  the 12-digit AWS account of the IRSA role; replaces AWS_ACCOUNT_ID from
#               k8s/kustomization.yaml for this deployment
#
# The Deployment gets the image by the digest the push returned (REGISTRY/sqs-processor@sha256:...),
# not by its tag.
#
#   --dry-run   check everything and print each command instead of running it; nothing is
#               built, pushed or applied (kubectl only renders the kustomization locally)
#   --tag       image tag (default: the project version plus the git commit, e.g. 0.1.0-3f2a9c1)
#   --digest    deploy REGISTRY/sqs-processor@DIGEST (sha256:...), already pushed (by CI):
#               nothing is built or pushed, and only kubectl is needed
#   --region    region for the ECR login (default: the one in an ECR registry name)
#   --k8s-dir   the kustomization to deploy (default: k8s/ beside this script)
#
# The queue, bucket, region and prefix come from k8s/kustomization.yaml (the one place they are
# set); this script refuses to deploy while they still hold the shipped placeholders. It needs
# docker, kubectl (with a context for the cluster) and, for an ECR registry, the AWS CLI; with
# --digest only kubectl.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
IMAGE_NAME=sqs-processor
NAMESPACE=sqs-processor
DEPLOYMENT=sqs-processor
PLACEHOLDER_ACCOUNT=123456789012   # the documentation account id the shipped values use
PLACEHOLDER_MARK=replace-me

die() {
    echo "deploy.sh: error: $*" >&2
    exit 2
}

usage() {
    sed -n '2,26p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

DRY_RUN=0
TAG=""
DIGEST=""
REGION=""
K8S_DIR="$ROOT/k8s"
POSITIONAL=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) DRY_RUN=1; shift ;;
        --tag) [[ $# -ge 2 && -n "$2" ]] || die "--tag needs a value"; TAG="$2"; shift 2 ;;
        --digest) [[ $# -ge 2 && -n "$2" ]] || die "--digest needs a value"; DIGEST="$2"; shift 2 ;;
        --region) [[ $# -ge 2 && -n "$2" ]] || die "--region needs a value"; REGION="$2"; shift 2 ;;
        --k8s-dir) [[ $# -ge 2 && -n "$2" ]] || die "--k8s-dir needs a value"; K8S_DIR="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        --) shift; POSITIONAL+=("$@"); break ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) POSITIONAL+=("$1"); shift ;;
    esac
done

if [[ ${#POSITIONAL[@]} -ne 2 ]]; then
    usage >&2
    die "expected 2 arguments, REGISTRY and ACCOUNT_ID; got ${#POSITIONAL[@]}"
fi
REGISTRY="${POSITIONAL[0]%/}"
ACCOUNT_ID="${POSITIONAL[1]}"

# ---- arguments ----------------------------------------------------------------------------
[[ "$REGISTRY" =~ ^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]+)?(/[a-z0-9._-]+)*$ ]] \
    || die "REGISTRY '$REGISTRY' is not a registry name (expected e.g." \
           "123456789012.dkr.ecr.us-west-1.amazonaws.com, without https://)"
[[ "$ACCOUNT_ID" =~ ^[0-9]{12}$ ]] \
    || die "ACCOUNT_ID '$ACCOUNT_ID' is not an AWS account id (expected 12 digits)"
[[ "$ACCOUNT_ID" != "$PLACEHOLDER_ACCOUNT" ]] \
    || die "ACCOUNT_ID $PLACEHOLDER_ACCOUNT is the documentation placeholder; pass your account id"

ECR=0
if [[ "$REGISTRY" =~ ^[0-9]{12}\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com$ ]]; then
    ECR=1
    REGION="${REGION:-${BASH_REMATCH[1]}}"
fi
if [[ -n "$REGION" && ! "$REGION" =~ ^[a-z]{2}(-[a-z]+)+-[0-9]+$ ]]; then
    die "--region '$REGION' is not an AWS region name (expected e.g. us-west-1)"
fi

[[ -f "$K8S_DIR/kustomization.yaml" ]] \
    || die "no kustomization.yaml in '$K8S_DIR' (--k8s-dir must be the folder to deploy)"
K8S_DIR="$(cd "$K8S_DIR" && pwd)"

# ---- tools --------------------------------------------------------------------------------
if [[ -n "$DIGEST" ]]; then
    [[ "$DIGEST" =~ ^sha256:[0-9a-f]{64}$ ]] \
        || die "--digest '$DIGEST' is not an image digest (expected sha256: and 64 hex digits)"
    [[ -z "$TAG" ]] || die "--tag and --digest exclude each other: a digest names one image"
fi
need=(kubectl)
if [[ -z "$DIGEST" ]]; then
    need+=(docker)
    [[ $ECR -eq 1 ]] && need+=(aws)
fi
for tool in "${need[@]}"; do
    command -v "$tool" >/dev/null 2>&1 \
        || die "'$tool' is not installed or not on PATH (needed: ${need[*]})"
done

if [[ -z "$TAG" ]]; then
    version="$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' "$ROOT/pyproject.toml" | head -n 1)"
    [[ -n "$version" ]] || die "cannot read the version from pyproject.toml; pass --tag"
    commit="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || true)"
    TAG="$version${commit:+-$commit}"
fi
[[ "$TAG" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "--tag '$TAG' is not a valid image tag"
[[ "$TAG" != latest ]] || die "--tag latest would make rollouts ambiguous; use a version"
IMAGE="$REGISTRY/$IMAGE_NAME:$TAG"
[[ -z "$DIGEST" ]] || IMAGE="$REGISTRY/$IMAGE_NAME@$DIGEST"

# ---- the deployment overlay: this image and this account on top of the kustomization ------
OVERLAY="$(mktemp -d "$(dirname "$K8S_DIR")/.deploy.XXXXXX")"
trap 'rm -rf "$OVERLAY"' EXIT
cat > "$OVERLAY/kustomization.yaml" <<YAML
# Written by deploy.sh: $(basename "$K8S_DIR")/ with image $IMAGE and account $ACCOUNT_ID.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../$(basename "$K8S_DIR")
configMapGenerator:
  - name: sqs-processor-settings
    namespace: $NAMESPACE
    behavior: merge
    literals:
      - AWS_ACCOUNT_ID=$ACCOUNT_ID
patches:
  - patch: |-
      apiVersion: apps/v1
      kind: Deployment
      metadata:
        name: $DEPLOYMENT
        namespace: $NAMESPACE
      spec:
        template:
          spec:
            containers:
              - name: sqs-processor
                image: $IMAGE
replacements:
  - source:
      kind: ConfigMap
      name: sqs-processor-settings
      fieldPath: data.AWS_ACCOUNT_ID
    targets:
      - select:
          kind: ServiceAccount
          name: sqs-processor
        fieldPaths:
          - metadata.annotations.[eks.amazonaws.com/role-arn]
        options:
          delimiter: ":"
          index: 4
YAML

# Render locally (no cluster involved) to check it builds and that the values were set.
rendered="$(kubectl kustomize "$OVERLAY" 2>&1)" \
    || die "the kustomization in $K8S_DIR does not render: $rendered"
for setting in SQS_QUEUE_URL S3_BUCKET_NAME; do
    line="$(grep -E "^  $setting: " <<<"$rendered" | head -n 1 || true)"
    [[ -n "$line" ]] || die "$setting is not set in $K8S_DIR/kustomization.yaml"
    if [[ "$line" == *"$PLACEHOLDER_MARK"* || "$line" == *"$PLACEHOLDER_ACCOUNT"* ]]; then
        die "$setting in $K8S_DIR/kustomization.yaml still holds the placeholder (${line#  });" \
            "set your own value there first"
    fi
done
grep -q "image: $IMAGE\$" <<<"$rendered" || die "the rendered Deployment does not use $IMAGE"
grep -q "role-arn: arn:aws:iam::$ACCOUNT_ID:" <<<"$rendered" \
    || die "the rendered service account does not name a role in account $ACCOUNT_ID"

# ---- build, push, apply -------------------------------------------------------------------
run() {
    if [[ $DRY_RUN -eq 1 ]]; then
        printf '+'; printf ' %q' "$@"; printf '\n'
    else
        "$@"
    fi
}

created="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
revision="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
[[ $DRY_RUN -eq 1 ]] && echo "deploy.sh: dry run; nothing below is executed"
echo "deploy.sh: image $IMAGE, account $ACCOUNT_ID, kustomization $K8S_DIR"

if [[ $ECR -eq 1 && -z "$DIGEST" ]]; then
    if [[ $DRY_RUN -eq 1 ]]; then
        echo "+ aws ecr get-login-password --region $REGION | docker login --username AWS --password-stdin $REGISTRY"
    else
        aws ecr get-login-password --region "$REGION" \
            | docker login --username AWS --password-stdin "$REGISTRY"
    fi
fi
if [[ -z "$DIGEST" ]]; then
    run docker build --tag "$IMAGE" --build-arg "VERSION=$TAG" --build-arg "REVISION=$revision" \
        --build-arg "CREATED=$created" "$ROOT"
    run docker push "$IMAGE"
fi

# Apply the image by the digest the registry gave the push, not by its tag: a tag can move,
# a digest names exactly what was built and tested.
if [[ -n "$DIGEST" ]]; then
    PINNED="$IMAGE"
elif [[ $DRY_RUN -eq 1 ]]; then
    PINNED="$REGISTRY/$IMAGE_NAME@sha256:<digest of the pushed image>"
    echo "+ docker image inspect --format '{{join .RepoDigests \" \"}}' $IMAGE"
else
    digests="$(docker image inspect --format '{{join .RepoDigests " "}}' "$IMAGE")" \
        || die "cannot read the digest of $IMAGE after the push"
    PINNED=""
    for candidate in $digests; do
        if [[ "$candidate" == "$REGISTRY/$IMAGE_NAME@sha256:"* ]]; then
            PINNED="$candidate"
        fi
    done
    [[ -n "$PINNED" ]] || die "the registry returned no digest for $IMAGE (got: ${digests:-none})"
fi
sed -i "s|^                image: $IMAGE\$|                image: $PINNED|" "$OVERLAY/kustomization.yaml"
grep -qF "image: $PINNED" "$OVERLAY/kustomization.yaml" \
    || die "could not pin the image by digest in the overlay"
if [[ $DRY_RUN -eq 1 ]]; then
    echo "+ kubectl apply -k <overlay>   # the overlay, written to a temporary folder:"
    sed 's/^/    /' "$OVERLAY/kustomization.yaml"
else
    kubectl apply -k "$OVERLAY"
fi
run kubectl --namespace "$NAMESPACE" rollout status "deployment/$DEPLOYMENT" --timeout=300s
[[ $DRY_RUN -eq 1 ]] && echo "deploy.sh: dry run complete"
exit 0
