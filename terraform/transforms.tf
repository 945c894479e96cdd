# Transformed copies in the upload step (docs/configuration.md, "Transformed copies"): Google's
# redact/compress flags for the default store's copy, and the key every de-identification needs.
# Only variables here, no resources, so the tests can evaluate it without providers.

locals {
  # Google's flags by name (DICOM_ADAPTER_<flag>, lists comma-separated as there).
  default_transform_flags = {
    redact_remove_list                = join(",", var.redact_remove_list)
    redact_keep_list                  = join(",", var.redact_keep_list)
    redact_filter_profile             = var.redact_filter_profile
    store_compress_to_transfer_syntax = var.store_compress_to_transfer_syntax
  }
  deidentify_key_environment = var.deidentify_key_secret == "" ? {} : { DICOM_ADAPTER_DEIDENTIFY_KEY_SECRET = var.deidentify_key_secret }

  # A transcode holds 4-5 times the decoded pixel data it takes (docs/benchmarks.md, "Transcoding
  # and de-identification"), beside the ~150 MiB a function instance needs idle; what
  # function_memory leaves bounds it, so a large instance is stored untranscoded with a WARNING
  # (and the transcode_skipped metric) instead of the instance running out of memory. Routed
  # destinations may ask for a transcode the edge's routing names, so the cap is always set.
  function_memory_mib       = tonumber(regex("^[0-9]+", var.function_memory)) * (endswith(var.function_memory, "Gi") ? 1024 : 1)
  transcode_max_pixel_bytes = floor(max(local.function_memory_mib - 192, 160) / 5) * 1048576
  transcode_environment     = { DICOM_ADAPTER_TRANSCODE_MAX_PIXEL_BYTES = tostring(local.transcode_max_pixel_bytes) }

  # By function, what functions.tf adds to its environment: the transcode cap, and only the
  # transform settings given. stow_upload makes the default store's copy (and those of routed
  # destinations), deliver those of export destinations.
  transform_environment = {
    stow_upload = merge(
      { for flag, value in local.default_transform_flags : "DICOM_ADAPTER_${upper(flag)}" => value if value != "" },
      local.deidentify_key_environment,
      local.transcode_environment,
    )
    deliver = merge(local.deidentify_key_environment, local.transcode_environment)
  }

  # The functions that get the key may read its secret (iam.tf), and no other.
  deidentify_key_readers   = toset([for name, env in local.transform_environment : name if contains(keys(env), "DICOM_ADAPTER_DEIDENTIFY_KEY_SECRET")])
  deidentify_key_secret_id = var.deidentify_key_secret == "" ? null : regex("^projects/[^/]+/secrets/[^/]+", var.deidentify_key_secret)

  # Anything to de-identify (variables.tf: then a key is needed): a redact variable, or an
  # export destination with "deidentify" (a rule is a destination, or lists them in "destinations").
  deidentifies = anytrue([
    length(var.redact_remove_list) > 0,
    length(var.redact_keep_list) > 0,
    var.redact_filter_profile != "",
    try(anytrue([
      for rule in jsondecode(var.destination_config_json) :
      anytrue([for destination in concat([rule], try(rule.destinations, [])) : can(destination.deidentify)])
    ]), false),
  ])
}
