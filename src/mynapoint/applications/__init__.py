"""Point applications (申込・紐付け) and the registrations that earn 施策2 and 施策3."""
