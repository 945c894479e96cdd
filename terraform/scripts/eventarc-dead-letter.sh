#!/usr/bin/env bash
# Gives the Pub/Sub subscription an Eventarc trigger created a dead-letter topic and a retry
# backoff (the Terraform provider cannot: hashicorp/terraform-provider-google#17697), and lets
# the Pub/Sub service agent forward from it. Run by terraform (functions.tf) with:
#   TRIGGER               projects/P/locations/L/triggers/T (the function's event trigger)
#   DEAD_LETTER_TOPIC     projects/P/topics/T
#   MAX_DELIVERY_ATTEMPTS 5-100
#   MIN_RETRY_DELAY, MAX_RETRY_DELAY   e.g. 10s, 600s
#   PUBSUB_SERVICE_AGENT  serviceAccount:service-NUMBER@gcp-sa-pubsub.iam.gserviceaccount.com
set -euo pipefail
: "${TRIGGER:?}" "${DEAD_LETTER_TOPIC:?}" "${MAX_DELIVERY_ATTEMPTS:?}" "${MIN_RETRY_DELAY:?}" "${MAX_RETRY_DELAY:?}" "${PUBSUB_SERVICE_AGENT:?}"

subscription="$(gcloud eventarc triggers describe "$TRIGGER" --format='value(transport.pubsub.subscription)')"
if [ -z "$subscription" ]; then
  echo "trigger $TRIGGER has no Pub/Sub subscription" >&2
  exit 1
fi
gcloud pubsub subscriptions update "$subscription" \
  --dead-letter-topic="$DEAD_LETTER_TOPIC" \
  --max-delivery-attempts="$MAX_DELIVERY_ATTEMPTS" \
  --min-retry-delay="$MIN_RETRY_DELAY" \
  --max-retry-delay="$MAX_RETRY_DELAY"
gcloud pubsub subscriptions add-iam-policy-binding "$subscription" \
  --member="$PUBSUB_SERVICE_AGENT" --role=roles/pubsub.subscriber >/dev/null
echo "$subscription: dead letters to $DEAD_LETTER_TOPIC after $MAX_DELIVERY_ATTEMPTS deliveries, retry $MIN_RETRY_DELAY..$MAX_RETRY_DELAY"
