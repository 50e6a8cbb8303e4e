#!/usr/bin/env bash
# Turns the installed licence's GitLab Duo add-ons into add-on purchases now, so that
# configure-gitlab.sh finds Duo Enterprise right after the install. Without this, a licence
# seeded by gitlab.rb's initial_license_file is only saved: GitLab creates the purchase when a
# licence is uploaded in the Admin Area, or at 00:30 by its daily offline-licence worker.
# Installed on the GitLab VM as ferrollama-provision-duo and run by its first boot; safe to run
# again (the service updates an existing purchase).
set -euo pipefail

# The same service the upload and the daily worker call (GitLab EE 17.6+). It prints the
# self-managed add-on purchases afterwards, so a licence without Duo Enterprise shows here.
gitlab-rails runner '
  abort "no licence is installed" unless License.current
  result = GitlabSubscriptions::AddOnPurchases::SelfManaged::ProvisionServices::Duo.new.execute
  abort "provisioning the Duo add-on failed: #{result.message}" if result.error?
  names = GitlabSubscriptions::AddOnPurchase.for_self_managed.map { |p| p.add_on.name }
  puts "GitLab Duo add-on purchases: #{names.empty? ? "none" : names.join(", ")}"
'
