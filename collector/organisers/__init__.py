"""What organisers use: review, reports, the dashboard and the door."""
