terraform {
  # 1.9: a variable's validation may look at other variables and locals (the transforms').
  required_version = ">= 1.9.0"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 6.50.0"
    }
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = "~> 2.38.0"
    }
    archive = {
      source  = "hashicorp/archive"
      version = "~> 2.7.1"
    }
  }

  # State lives in a GCS bucket of the operator's choosing:
  #   terraform init -backend-config=bucket=STATE_BUCKET -backend-config=prefix=dicom-adapter
  backend "gcs" {}
}
