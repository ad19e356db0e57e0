{"targets":[{"target_name":"ublkdm_native","sources":["native/placeholder.cc"]}]}
